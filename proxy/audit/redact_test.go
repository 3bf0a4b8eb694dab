package audit

import (
	"strings"
	"testing"
)

func TestRedactCommand(t *testing.T) {
	const secret = "s3cr3t-value-xyz"
	for _, c := range []struct{ in, want string }{
		{"FOO=" + secret + " env", "FOO=*** env"},
		{"A=1 B='" + secret + "' /usr/bin/python3 /tmp/x.py", "A=*** B=*** /usr/bin/python3 /tmp/x.py"},
		{"export TOKEN=" + secret + "; run", "export TOKEN=***; run"},
		{"env -i TOKEN=" + secret + " run", "env -i TOKEN=*** run"},
		{"sudo -u root DB_PASSWORD=" + secret + " run", "sudo -u root DB_PASSWORD=*** run"},
		{"/bin/sh -c 'GOMUX_SECRET=" + secret + " /usr/bin/python3 /root/.ansible/tmp/a/AnsiballZ_command.py && sleep 0'",
			"/bin/sh -c 'GOMUX_SECRET=*** /usr/bin/python3 /root/.ansible/tmp/a/AnsiballZ_command.py && sleep 0'"},
		// Ansible's become: a script quoted inside a script.
		{`/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-abc ; GOMUX_SECRET=` + secret + ` /usr/bin/python3'"'"' && sleep 0'`,
			`/bin/sh -c 'sudo -H -S -n  -u root /bin/sh -c '"'"'echo BECOME-SUCCESS-abc ; GOMUX_SECRET=*** /usr/bin/python3'"'"' && sleep 0'`},
		{`bash -c "X=` + secret + ` run"`, `bash -c 'X=*** run'`},
		{"arr=(" + secret + " b); run", "arr=(***); run"},
		{"arr=(" + secret + " b) run", "arr=*** run"},
		// No assignment: unchanged, byte for byte.
		{"/bin/sh -c 'echo ~root && sleep 0'", "/bin/sh -c 'echo ~root && sleep 0'"},
		{"dd of=/tmp/x bs=65536", "dd of=/tmp/x bs=65536"},
		// Unparseable: redacted by pattern.
		{"FOO=" + secret + " run 'unterminated", "FOO=*** run 'unterminated"},
		// Nested past what gomux parses: redacted by pattern, unparsed.
		{"FOO=" + secret + " echo " + strings.Repeat("$(", 600), "FOO=*** echo " + strings.Repeat("$(", 600)},
	} {
		got := RedactCommand(c.in)
		if got != c.want {
			t.Errorf("RedactCommand(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
		if strings.Contains(got, secret) {
			t.Errorf("secret left in %q", got)
		}
	}
}

func FuzzRedactCommand(f *testing.F) {
	f.Add("FOO=bar /bin/sh -c 'X=y z'")
	f.Add(`/bin/sh -c 'sudo /bin/sh -c '"'"'A=b c'"'"''`)
	f.Fuzz(func(t *testing.T, s string) {
		RedactCommand(s)
	})
}
