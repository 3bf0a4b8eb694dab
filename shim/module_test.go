package shim

import (
	"bytes"
	"testing"
)

func TestSplitModule(t *testing.T) {
	wrapper := []byte("#!/usr/bin/python\nimport sys\ndef _ansiballz_main():\n    ZIPDATA = \"\"\"UEsDBBQ...\"\"\"\n    x = 1\n    ANSIBALLZ_PARAMS = '{\"a\": 1}'\n    run()\n")
	parts := splitModule(wrapper, nil)
	if len(parts) != 5 {
		t.Fatalf("%d parts", len(parts))
	}
	var joined []byte
	for _, p := range parts {
		joined = append(joined, p.Data...)
	}
	if !bytes.Equal(joined, wrapper) {
		t.Fatal("parts do not join to the file")
	}
	if !bytes.HasPrefix(parts[1].Data, []byte("    ZIPDATA")) || !bytes.HasPrefix(parts[3].Data, []byte("    ANSIBALLZ_PARAMS")) {
		t.Errorf("cut in the wrong places: %q %q", parts[1].Data, parts[3].Data)
	}
	if splitModule([]byte("just a file\n"), nil) != nil {
		t.Error("plain file split")
	}
}

// TestModuleParts: a pipelined module is cut like an uploaded one; a
// script without an archive (interpreter discovery's) is not.
func TestModuleParts(t *testing.T) {
	wrapper := []byte("#!/usr/bin/python\ndef _ansiballz_main():\n    ZIPDATA = \"\"\"UEsDBBQ...\"\"\"\n    ANSIBALLZ_PARAMS = '{\"a\": 1}'\n    run()\n")
	parts := ModuleParts(wrapper, nil)
	var joined []byte
	for _, p := range parts {
		joined = append(joined, p.Data...)
	}
	if len(parts) < 3 || !bytes.Equal(joined, wrapper) {
		t.Fatalf("%d parts, joined equal: %v", len(parts), bytes.Equal(joined, wrapper))
	}
	noArchive := []byte("import sys\nANSIBALLZ_PARAMS = 1\nx = 2\nprint(x)\n")
	if ModuleParts(noArchive, nil) != nil || ModuleParts(nil, nil) != nil {
		t.Fatal("a script without ZIPDATA was cut")
	}
}
