package pyrun

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// forkServerFastPathCheck runs in the fork server's own Python with
// forkserver.py loaded as a module. It holds the fork server's fast
// paths to what they replace: zipdata_span and read_wrapper to ZIPDATA_RE
// and the three name patterns searched over the whole script, on fixed
// and on random scripts; compile_script to compile(), which must give
// the same code (everything but the column table) when it takes its
// fast path, byte-identical code when it does not, and the same
// SyntaxError.
const forkServerFastPathCheck = `
import hashlib, importlib.util, marshal, random, sys, types
spec = importlib.util.spec_from_file_location("fs", sys.argv[1])
fs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fs)

def ref_read_wrapper(script):
    if fs.WRAPPER_MARK not in script:
        return None
    m = fs.ZIPDATA_RE.search(script)
    if not m:
        return None
    data = m.group(1)
    mod = fs.MODULE_RE.search(script)
    module = mod.group(1).decode() if mod else ""
    prefix, zipname = fs.PAYLOAD_RE.search(script), fs.ZIPNAME_RE.search(script)
    name = module
    if prefix and zipname:
        prefix, zipname = prefix.group(1).decode(), zipname.group(1).decode()
        name += "\0" + prefix + "\0" + zipname
    else:
        prefix = zipname = ""
    return fs.Wrapper(hashlib.sha256(data + b"\0" + name.encode()).hexdigest(), data, module, prefix, zipname)

failures = []
def check_span(script):
    m = fs.ZIPDATA_RE.search(script)
    want = m.span(1) if m else None
    got = fs.zipdata_span(script)
    if got != want:
        failures.append("zipdata_span(%r) = %r, want %r" % (script[:200], got, want))
    if fs.read_wrapper(script) != ref_read_wrapper(script):
        failures.append("read_wrapper(%r) differs" % script[:200])

fixed = [
    b"", b'ZIPDATA = """abc"""', b'\nZIPDATA = """abc"""', b'x = 1; ZIPDATA = """abc"""',
    b'\n \t\r\x0b\x0cZIPDATA = """ab c\n\td="""', b'\nZIPDATA = """ab!c"""\n ZIPDATA = """good"""',
    b'\nZIPDATA = """ab"c"""\nZIPDATA = """x"""', b'\nZIPDATA = """abc', b'\nZIPDATA = """"""',
    b'\nZIPDATA = """a""', b' \nxZIPDATA = """a"""', b'\n\nZIPDATA = """a""""',
]
for s in fixed:
    check_span(s)
    check_span(fs.WRAPPER_MARK + s)
pieces = [b"\n", b" ", b"\t", b"\r", b"x", b"=", b"+", b"/", b'"', b'"""', b"!", b"(", b"'",
          b'ZIPDATA = """', b"ZIPDATA", fs.WRAPPER_MARK,
          b"runpy.run_module(mod_name='ansible.modules.a'", b"runpy.run_module(mod_name='ansible.modules.b'",
          b"tempfile.mkdtemp(prefix='ansible_a_payload_')", b"os.path.join(temp_path, 'ansible_a_payload.zip')",
          b"tempfile.mkdtemp(prefix='ansible_b_payload_')", b"os.path.join(temp_path, 'ansible_b_payload.zip')"]
rnd = random.Random(12)
for _ in range(20000):
    check_span(b"".join(rnd.choice(pieces) for _ in range(rnd.randrange(1, 30))))

def same_code(a, b, columns):
    if columns:
        return marshal.dumps(a) == marshal.dumps(b)
    for k in ("co_code", "co_names", "co_varnames", "co_freevars", "co_cellvars", "co_filename", "co_name",
              "co_qualname", "co_firstlineno", "co_flags", "co_argcount", "co_posonlyargcount",
              "co_kwonlyargcount", "co_stacksize", "co_nlocals", "co_exceptiontable"):
        if getattr(a, k) != getattr(b, k):
            return False
    if list(a.co_lines()) != list(b.co_lines()) or len(a.co_consts) != len(b.co_consts):
        return False
    for x, y in zip(a.co_consts, b.co_consts):
        if isinstance(x, types.CodeType):
            if not isinstance(y, types.CodeType) or not same_code(x, y, False):
                return False
        elif type(x) is not type(y) or x != y:
            return False
        elif type(x) is str and x and not x.encode("ascii", "replace").translate(None, fs.NAME_CHARS) and x is not y:
            # Both interned by the compiler: one object.
            return False
    return True

compiled = []
real_compile = compile
def spy(src, *a, **k):
    compiled.append(src)
    return real_compile(src, *a, **k)
fs.compile = spy

def check_compile(name, source, fast):
    del compiled[:]
    try:
        want = compile(source, "/t/AnsiballZ_x.py", "exec", dont_inherit=True)
    except SyntaxError as e:
        want = e
    try:
        got = fs.compile_script(source, "/t/AnsiballZ_x.py")
    except SyntaxError as e:
        got = e
    standin = fs.ZIPDATA_STANDIN.encode()
    took = len(compiled) == 1 and standin in compiled[0] and standin not in source
    if fast is None:
        fast = took
    if took != fast:
        failures.append("%s: fast path taken %s, want %s" % (name, took, fast))
    if isinstance(want, SyntaxError):
        if not isinstance(got, SyntaxError) or want.args != got.args:
            failures.append("%s: got %r, want %r" % (name, got, want))
        return
    if not isinstance(got, types.CodeType) or not same_code(want, got, not fast):
        failures.append("%s: code differs" % name)

b64 = bytes(rnd.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(8000)) + b"=="
alnum = bytes(rnd.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8000))
def wrapper(lit, tail=b""):
    return (b"_ANSIBALLZ_WRAPPER = True\ndef _ansiballz_main():\n    import os\n    ZIPDATA = " + lit + tail +
            b"\n    x = ZIPDATA\n    return len(x), 'tail'\nif __name__ == '__main__':\n    _ansiballz_main()\n")
check_compile("base64", wrapper(b'"""' + b64 + b'"""'), True)
check_compile("name-like", wrapper(b'"""' + alnum + b'"""'), True)
check_compile("short", wrapper(b'"""abc"""'), False)
check_compile("newline", wrapper(b'"""' + b64[:5000] + b"\n" + b64[5000:] + b'"""'), False)
check_compile("spaces", wrapper(b'"""' + b64[:5000] + b" " + b64[5000:] + b'"""'), True)
check_compile("concatenated", wrapper(b'"""' + b64 + b'"""', b' "x"'), False)
check_compile("standin in source", wrapper(b'"""' + b64 + b'"""', b"  # " + fs.ZIPDATA_STANDIN.encode()), False)
check_compile("inside another string", b"s = '''\nZIPDATA = \"\"\"" + b64 + b"\"\"\"\n'''\n", False)
check_compile("syntax error", wrapper(b'"""' + b64 + b'"""', b" +"), False)
check_compile("syntax error on its line", b"x = (\n  ZIPDATA = \"\"\"" + b64 + b"\"\"\"\n", False)
if len(sys.argv) > 2:
    check_compile("wrapper", open(sys.argv[2], "rb").read(), None)

for f in failures[:20]:
    print(f)
sys.exit(1 if failures else 0)
`

// TestForkServerFastPaths: the fork server's shortcuts for reading and
// compiling an AnsiballZ wrapper (cheaper per run, BenchmarkChainStages)
// give what the plain regex searches and compile() give.
func TestForkServerFastPaths(t *testing.T) {
	dir := t.TempDir()
	runForkServerCheck(t, dir, forkServerFastPathCheck, fakeAnsiballZ(t, dir, `{"act": "exit", "code": 0}`))
}

// runForkServerCheck writes the embedded fork server and a check script
// into dir and runs `python3 check.py forkserver.py args...`; the check
// loads the server as a module, prints what differs and exits 1 if any.
func runForkServerCheck(t *testing.T, dir, checkSource string, args ...string) {
	t.Helper()
	l := newPyLab(t)
	script := filepath.Join(dir, "forkserver.py")
	check := filepath.Join(dir, "check.py")
	if err := os.WriteFile(script, forkServerScript, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(check, []byte(checkSource), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(l.python, append([]string{check, script}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, strings.TrimSpace(string(out)))
	}
}

// forkServerPrecompileCheck holds precompile and install_compiled to
// zipimport: the code a run's import takes from the template's cache
// equals zipimport's own compile of the same source under the same file
// name, file names and line tables of every nested code object too (nested code objects and CRLF line endings
// included); a source that warns or does not compile is not cached, so
// the run compiles it itself; and an import through the installed hook
// names the archive's file in every code object.
const forkServerPrecompileCheck = `
import importlib.util, sys, types, zipfile, zipimport
spec = importlib.util.spec_from_file_location("fs", sys.argv[1])
fs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fs)
zp = sys.argv[2]

def walk(code):
    # What code equality leaves out: file names, nested.
    return [(code.co_filename, code.co_name, list(code.co_lines()))] + [
        w for c in code.co_consts if isinstance(c, types.CodeType) for w in walk(c)]

with zipfile.ZipFile(zp, "w") as z:
    z.writestr("gmxpkg/__init__.py", "")
    z.writestr("gmxpkg/mod.py", "def f():\n    def g():\n        return 1\n    return g\nclass C:\n    x = lambda: 2\n")
    z.writestr("gmxpkg/crlf.py", "a = 1\r\nb = 2\r\n")
    z.writestr("gmxpkg/warns.py", "x = '\\d'\n")
    z.writestr("gmxpkg/bad.py", "def (:\n")
cache = fs.precompile(zp)
failures = []
with zipfile.ZipFile(zp) as z:
    for name in ["gmxpkg/__init__.py", "gmxpkg/mod.py", "gmxpkg/crlf.py"]:
        data = z.read(name)
        if data not in cache:
            failures.append("%s not precompiled" % name)
            continue
        path = zp + "/" + name
        want = zipimport._compile_source(path, data)
        got = fs.with_filename(cache[data], path)
        if got != want or walk(got) != walk(want):
            failures.append("%s: cached code differs from compile" % name)
    for name in ["gmxpkg/warns.py", "gmxpkg/bad.py"]:
        if z.read(name) in cache:
            failures.append("%s was cached" % name)
fs.install_compiled(cache)
sys.path.insert(0, zp)
import gmxpkg.mod
m = gmxpkg.mod
for c in (m.f.__code__, m.f().__code__, m.C.x.__code__):
    if c.co_filename != m.__file__:
        failures.append("%s: co_filename %r, want %r" % (c.co_name, c.co_filename, m.__file__))
for f in failures:
    print(f)
sys.exit(1 if failures else 0)
`

// TestForkServerPrecompiledSameCode: the template's precompiled module
// sources give a run exactly the code zipimport would have compiled.
func TestForkServerPrecompiledSameCode(t *testing.T) {
	dir := t.TempDir()
	runForkServerCheck(t, dir, forkServerPrecompileCheck, filepath.Join(dir, "a.zip"))
}
