package fixedpath

import (
	"reflect"
	"testing"
)

func TestUnfixed(t *testing.T) {
	for _, c := range []struct {
		src  string
		want []string
	}{
		{`echo hi; [ -d /x ] && exit 1`, nil},
		{`mkdir -p /x`, []string{"mkdir"}},
		{Set + `mkdir -p /x; m=$(uname -m)`, nil},
		{`m=$(uname -m); ` + Set + `mkdir /x`, []string{"uname"}},
		{`/usr/bin/mkdir /x; exec "$f" serve; "$t" x`, nil},
		{`exec mv a b`, []string{"mv"}},
		// Only an unconditional assignment in this shell fixes PATH.
		{`true && ` + Set + `mkdir /x`, []string{"mkdir"}},
		{`( ` + Set + `mkdir /x ); mv a b`, []string{"mv"}},
		{`if x; then ` + Set + `fi; rm a`, []string{"x", "rm"}},
		{Set + `( mkdir /x ) && { rm a; } | cut -c1`, nil},
		{Set + `PATH=$p; mv a b`, []string{"mv"}},
		{Set + `unset PATH; mv a b`, []string{"mv"}},
		{Set + `for i in 1 2; do if [ -f "$(sha256sum < a | cut -c1-64)" ]; then mv a b; fi; done`, nil},
		{Set + `case "$(id -u)" in 0) chmod 700 a ;; esac`, nil},
		// A program handed to sh -c is checked with the state it inherits.
		{`exec /bin/sh -c 'stat a; echo ok'`, []string{"stat"}},
		{Set + `exec /bin/sh -c 'stat a'`, nil},
		{`exec /bin/sh -c '` + Set + `stat a'`, nil},
	} {
		got, err := Unfixed(c.src)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s:\n got %q %v\nwant %q", c.src, got, err, c.want)
		}
	}
	if _, err := Unfixed(`if then; (`); err == nil {
		t.Error("a program that does not parse passed")
	}
}
