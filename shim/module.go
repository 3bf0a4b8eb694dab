package shim

import (
	"bytes"

	"github.com/gomux/gomux/agent"
)

// splitModule cuts an AnsiballZ wrapper into pieces that repeat across
// tasks: the module archive line (ZIPDATA, the same for every task of one
// module within a run) and the wrapper code stand apart from the one line
// that changes per task (ANSIBALLZ_PARAMS). The agent caches each piece,
// so a module's later tasks send little more than their parameters.
// Anything that does not look like a wrapper is one piece. The archive's
// sum comes from sums, so it is hashed once per gomux, not per task.
func splitModule(data []byte, sums *Sums) []agent.PrepPart {
	var parts []agent.PrepPart
	start := 0
	cut := func(end int) {
		if end > start {
			parts = append(parts, agent.PrepPart{Data: data[start:end]})
			start = end
		}
	}
	for off := 0; off < len(data); {
		nl := bytes.IndexByte(data[off:], '\n')
		end := len(data)
		if nl >= 0 {
			end = off + nl + 1
		}
		line := bytes.TrimLeft(data[off:end], " \t")
		if bytes.HasPrefix(line, []byte(`ZIPDATA = """`)) || bytes.HasPrefix(line, []byte(`ANSIBALLZ_PARAMS = `)) {
			cut(off)
			cut(end)
		}
		off = end
	}
	cut(len(data))
	if len(parts) < 3 {
		return nil
	}
	for i := range parts {
		if isZipdata(parts[i].Data) {
			parts[i].SHA256 = sums.Of(parts[i].Data)
		}
	}
	return parts
}

// isZipdata says whether a piece is the wrapper's archive line.
func isZipdata(p []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(p, " \t"), []byte(`ZIPDATA = """`))
}

// ModuleParts cuts a pipelined AnsiballZ module (what Ansible writes to
// the interpreter's stdin) into the pieces the agent caches one by one,
// as for an uploaded module file; nil when data is not such a module.
// sums (shared with the Hosts, HostLimits.Sums) saves hashing its archive
// again; nil hashes it.
func ModuleParts(data []byte, sums *Sums) []agent.PrepPart {
	parts := splitModule(data, sums)
	for _, p := range parts {
		if isZipdata(p.Data) {
			return parts
		}
	}
	return nil
}
