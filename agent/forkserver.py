# gomux fork server: a warm Python for Ansible modules on this target.
#
# Started by `gomux-agent pyrun` (see PROTOCOL.md, "Warm Python") as
#   <interpreter> forkserver.py <socket> <idle-seconds> <agent PID:starttime or ->
# with fd 3 a pipe on which it says "ok" once it listens, or "cold <why>".
#
# Process tree: the server accepts requests; per AnsiballZ ZIPDATA it forks a
# template that has imported ansible.module_utils.basic from that zip; per run
# the template forks a child that becomes the payload's __main__ and never
# comes back, so nothing one task does is seen by the next.
#
# Nothing here may crash a task: any doubt before a run is committed answers
# "cold", and the client then runs the interpreter itself.

import os
import sys

VERSION = 1
MAX_SCRIPT = 64 << 20
MAX_TEMPLATES = 16


def _send_ready(fd, msg):
    try:
        os.write(fd, msg.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _supported():
    if sys.implementation.name != "cpython":
        return "not CPython"
    if sys.version_info < (3, 9):
        return "Python older than 3.9"
    if not hasattr(os, "pidfd_open"):
        return "no pidfd_open"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as e:
        return "pidfd_open: %s" % e
    return ""


# What AnsiballZ's wrapper imports before basic: loaded once, here.
import array  # noqa: E402
import base64  # noqa: E402,F401
import builtins  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import runpy  # noqa: E402,F401
import select  # noqa: E402
import shutil  # noqa: E402,F401
import signal  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
import zipfile  # noqa: E402,F401

ZIPDATA_RE = re.compile(rb'\n\s*ZIPDATA = """([A-Za-z0-9+/=\s]*)"""')
MODULE_RE = re.compile(rb"runpy\.run_module\(mod_name='([A-Za-z0-9_.]+)'")
# The names the wrapper unpacks its archive under.
PAYLOAD_RE = re.compile(rb"tempfile\.mkdtemp\(prefix='(ansible_[A-Za-z0-9_.]+_payload_)'\)")
ZIPNAME_RE = re.compile(rb"os\.path\.join\(temp_path, '(ansible_[A-Za-z0-9_.]+_payload\.zip)'\)")
# Top-level imports of module_utils in a module's source: the template
# imports them too, as the module would before anything else.
UTILS_RE = re.compile(r"^(?:from\s+(ansible(?:_collections)?\.[\w.]*module_utils[\w.]*)\s+import|import\s+(ansible\.module_utils[\w.]*)\s*$)", re.M)
WRAPPER_MARK = b"_ANSIBALLZ_WRAPPER = True"

# sys.path as a fresh `python3 script` has it, without its first entry
# (the script's directory, or '' for stdin).
BASE_PATH = list(sys.path[1:])

# PEP 538: an interpreter started in the C locale sets LC_CTYPE in its own
# environment. Every client of this server has the locale variables the
# server started with (they are part of its key), so a fresh interpreter
# of theirs would have done the same.
COERCED_LC_CTYPE = os.environ.get("LC_CTYPE")


class Run(object):
    """One task: the client's request and the descriptors it passed."""

    def __init__(self, hdr, conn, fds):
        self.hdr = hdr
        self.conn = conn  # socket
        self.stdin, self.stdout, self.stderr, self.cwd, self.script = fds
        self.pid = 0
        self.pidfd = -1
        self.state = "ready"

    def close_fds(self):
        for fd in (self.stdin, self.stdout, self.stderr, self.cwd, self.script):
            try:
                os.close(fd)
            except OSError:
                pass
        self.stdin = self.stdout = self.stderr = self.cwd = self.script = -1


def send(conn, obj):
    try:
        conn.send(json.dumps(obj, separators=(",", ":")).encode())
        return True
    except OSError:
        return False


def recv_request(sock, nfds):
    """Reads one message and up to nfds descriptors from a SEQPACKET socket."""
    fds = array.array("i")
    msg, anc, flags, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(nfds * fds.itemsize))
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    got = list(fds)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in got:
            os.close(fd)
        raise ValueError("truncated message")
    return msg, got


def read_all(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    total = 0
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            break
        total += len(b)
        if total > MAX_SCRIPT:
            raise ValueError("script too large")
        chunks.append(b)
    return b"".join(chunks)


# ZIPDATA_RE's pieces, for zipdata_span: matching the archive's characters
# one by one in the regex engine cost half a millisecond per run.
ZIPDATA_NAME = b'ZIPDATA = """'
ZIPDATA_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\n\r\x0b\x0c"
SPACE = b" \t\n\r\x0b\x0c"  # \s of a bytes pattern


def zipdata_span(script, check=True):
    """Where group 1 of ZIPDATA_RE.search(script) starts and ends, or None:
    the same leftmost match, found with bytes.find and bytes.translate.
    Without check the characters in between are not looked at."""
    i = script.find(ZIPDATA_NAME)
    while i >= 0:
        # \n\s* before the name: a newline within the spaces before it.
        j = i
        newline = False
        while j > 0 and script[j - 1] in SPACE:
            j -= 1
            if script[j] == 0x0A:
                newline = True
                break
        if newline:
            start = i + len(ZIPDATA_NAME)
            # The class has no quote: its run ends at the first one,
            # which must open the closing """.
            end = script.find(b'"', start)
            if end < 0:
                return None
            if script.startswith(b'"""', end) and (not check or not script[start:end].translate(None, ZIPDATA_CHARS)):
                return start, end
        i = script.find(ZIPDATA_NAME, i + 1)
    return None


def _search_around(pattern, script, start, end):
    """pattern.search(script) for a pattern that needs a quote or a
    parenthesis, which ZIPDATA's characters are not: no match of it can
    lie within script[start:end] or reach into it, so only the text
    before and after is searched."""
    return pattern.search(script, 0, start) or pattern.search(script, end)


def zip_hash(script):
    """The archive's digest and data, and the module's name, of an
    AnsiballZ wrapper; None for anything else."""
    if WRAPPER_MARK not in script:
        return None, None, None
    span = zipdata_span(script)
    if span is None:
        return None, None, None
    start, end = span
    data = script[start:end]
    mod = _search_around(MODULE_RE, script, start, end)
    name = mod.group(1).decode() if mod else ""
    prefix, zipname = _search_around(PAYLOAD_RE, script, start, end), _search_around(ZIPNAME_RE, script, start, end)
    if prefix and zipname:
        name += "\0" + prefix.group(1).decode() + "\0" + zipname.group(1).decode()
    return hashlib.sha256(data + b"\0" + name.encode()).hexdigest(), data, name


def preimport(zippath, module):
    """Imports the module_utils the module imports at its top, from the
    archive: what every run of it would import first anyway."""
    if not module.startswith(("ansible.modules.", "ansible_collections.")):
        return
    try:
        with zipfile.ZipFile(zippath) as z:
            src = z.read(module.replace(".", "/") + ".py").decode("utf-8")
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return
    for m in UTILS_RE.finditer(src):
        try:
            __import__(m.group(1) or m.group(2))
        except Exception:
            pass


def check_header(h):
    if not isinstance(h, dict) or h.get("v") != VERSION:
        return "unknown request version"
    argv = h.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        return "bad argv"
    if argv[0] != sys.executable:
        return "interpreter differs"
    env = h.get("env")
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        return "bad env"
    for k in ("umask", "nice", "uid", "euid", "gid", "egid"):
        if not isinstance(h.get(k), int):
            return "bad " + k
    if (h["uid"], h["euid"]) != (os.getuid(), os.geteuid()) or (h["gid"], h["egid"]) != (os.getgid(), os.getegid()):
        return "credentials differ"
    groups = h.get("groups")
    if not isinstance(groups, list) or sorted(set(groups)) != sorted(set(os.getgroups())):
        return "groups differ"
    rl = h.get("rlimits")
    if not isinstance(rl, list) or not all(isinstance(r, list) and len(r) == 3 and all(isinstance(x, int) for x in r) for r in rl):
        return "bad rlimits"
    ign = h.get("sigign")
    if not isinstance(ign, list) or not all(isinstance(s, int) for s in ign):
        return "bad sigign"
    if not isinstance(h.get("script"), bool):
        return "bad script flag"
    return ""


def feasible(h):
    """Says why this process cannot give a child the client's limits."""
    if os.geteuid() == 0:
        return ""
    for res, cur, mx in h["rlimits"]:
        try:
            _, omx = resource.getrlimit(res)
        except (ValueError, OSError):
            return "rlimit %d" % res
        if omx != resource.RLIM_INFINITY and (mx == resource.RLIM_INFINITY or mx > omx):
            return "rlimit %d above this server's" % res
    if h["nice"] < os.getpriority(os.PRIO_PROCESS, 0):
        return "nice below this server's"
    return ""


class Exit(Exception):
    """Unwinds a forked child out of the loops to run its payload."""

    def __init__(self, run):
        Exception.__init__(self)
        self.run = run


class BecomeTemplate(Exception):
    """Unwinds a forked server out of its loop to become a template, closing
    on the way every descriptor the server held for the request at hand."""

    def __init__(self, ctl, workdir, digest, data, module, closers):
        Exception.__init__(self)
        self.ctl, self.workdir, self.digest, self.data, self.module = ctl, workdir, digest, data, module
        self.closers = closers


# ---------------------------------------------------------------- template


class Template(object):
    """A process holding basic imported from one zip; forks the runs."""

    def __init__(self, ctl, zippath, broken, alias=None):
        self.ctl = ctl
        self.zippath = zippath
        self.alias = alias  # payload_alias's directory
        self.broken = broken
        self.runs = {}  # conn fd -> Run
        self.bypid = {}  # pidfd -> Run
        self.closing = False

    def loop(self):
        poll = select.poll()
        poll.register(self.ctl.fileno(), select.POLLIN)
        while not (self.closing and not self.runs):
            for fd, ev in poll.poll():
                if fd == self.ctl.fileno():
                    self.from_server(poll, ev)
                elif fd in self.bypid:
                    self.reap(poll, self.bypid[fd])
                elif fd in self.runs:
                    self.from_client(poll, self.runs[fd])
        try:
            os.unlink(self.zippath)
        except OSError:
            pass
        if self.alias:
            shutil.rmtree(self.alias, True)

    def from_server(self, poll, ev):
        try:
            msg, fds = recv_request(self.ctl, 6)
        except (OSError, ValueError):
            msg, fds = b"", []
        if not msg:
            self.closing = True
            poll.unregister(self.ctl.fileno())
            return
        if len(fds) != 6:
            for fd in fds:
                os.close(fd)
            return
        conn = socket.socket(fileno=fds[0])
        run = Run(json.loads(msg), conn, fds[1:])
        why = self.broken or feasible(run.hdr)
        if why:
            send(conn, {"cold": why})
            run.close_fds()
            conn.close()
            return
        if not send(conn, {"ready": 1}):
            run.close_fds()
            conn.close()
            return
        self.runs[conn.fileno()] = run
        poll.register(conn.fileno(), select.POLLIN)

    def from_client(self, poll, run):
        try:
            msg = run.conn.recv(4096)
            m = json.loads(msg) if msg else None
        except (OSError, ValueError):
            msg, m = b"", None
        if run.state == "ready":
            if isinstance(m, dict) and m.get("go"):
                self.start(poll, run)
                return
            self.drop(poll, run)
            return
        if not msg:
            # The client is gone: so is the task, as with a killed sshd.
            try:
                os.killpg(run.pid, signal.SIGKILL)
            except OSError:
                pass
            poll.unregister(run.conn.fileno())
            return
        if isinstance(m, dict) and isinstance(m.get("signal"), int):
            try:
                os.killpg(run.pid, m["signal"])
            except (OSError, ValueError):
                pass

    def drop(self, poll, run):
        poll.unregister(run.conn.fileno())
        del self.runs[run.conn.fileno()]
        run.close_fds()
        run.conn.close()

    def start(self, poll, run):
        pid = os.fork()
        if pid == 0:
            # The child owns only its run's descriptors: drop the Python
            # objects of the others without closing numbers the payload
            # may reuse (child_prepare closes the descriptors themselves).
            self.ctl.detach()
            for r in self.runs.values():
                if r is not run:
                    r.conn.detach()
            raise Exit(run)
        try:
            os.setpgid(pid, pid)
        except OSError:
            pass
        run.close_fds()
        run.pid = pid
        run.state = "running"
        run.pidfd = os.pidfd_open(pid)
        self.bypid[run.pidfd] = run
        poll.register(run.pidfd, select.POLLIN)

    def reap(self, poll, run):
        try:
            _, st = os.waitpid(run.pid, 0)
        except ChildProcessError:
            st = None
        poll.unregister(run.pidfd)
        del self.bypid[run.pidfd]
        os.close(run.pidfd)
        if st is not None:
            if os.WIFSIGNALED(st):
                send(run.conn, {"status": {"signal": os.WTERMSIG(st), "core": os.WCOREDUMP(st)}})
            else:
                send(run.conn, {"status": {"code": os.WEXITSTATUS(st)}})
        try:
            poll.unregister(run.conn.fileno())
        except KeyError:
            pass
        del self.runs[run.conn.fileno()]
        run.conn.close()


# A module's own file in an AnsiballZ archive.
MODFILE_RE = re.compile(r"^(?:ansible/modules|ansible_collections/[^/]+/[^/]+/plugins/modules)/(?!__init__)([A-Za-z0-9_]+)\.py$")


def payload_alias(zippath, shape=""):
    """Gives the archive the name AnsiballZ unpacks it under,
    <tmp>/ansible_<module>_payload_<random>/ansible_<module>_payload.zip
    (a symlink), so the file names modules see in tracebacks and __file__
    read as without gomux. Returns the path to import from and the
    directory to remove with the template (None: no alias). shape is
    "prefix\\0zipname" as the wrapper spells them, when it could be read."""
    if shape:
        prefix, _, zipname = shape.partition("\0")
        return _link_payload(zippath, prefix, zipname)
    try:
        with zipfile.ZipFile(zippath) as z:
            mods = [m.group(1) for m in map(MODFILE_RE.match, z.namelist()) if m]
    except (OSError, ValueError, zipfile.BadZipFile):
        return zippath, None
    if len(mods) != 1:
        return zippath, None
    return _link_payload(zippath, "ansible_%s_payload_" % mods[0], "ansible_%s_payload.zip" % mods[0])


def _link_payload(zippath, prefix, zipname):
    """Link zippath as <new dir named prefix...>/zipname; (zippath, None)
    when that cannot be made."""
    d = tempfile.mkdtemp(prefix=prefix)
    link = os.path.join(d, zipname)
    try:
        os.symlink(zippath, link)
    except OSError:
        os.rmdir(d)
        return zippath, None
    return link, d


def template_main(ctl, workdir, digest, data, module):
    module, _, shape = module.partition("\0")
    zippath = os.path.join(workdir, "zip-%d-%s.zip" % (os.getpid(), digest[:16]))
    broken = ""
    alias = None
    try:
        fd = os.open(zippath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))
        importpath, alias = payload_alias(zippath, shape)
        sys.path.insert(0, importpath)
        gc.disable()
        try:
            __import__("ansible.module_utils.basic")
            preimport(zippath, module)
        finally:
            sys.path.remove(importpath)
    except BaseException as e:  # a broken zip makes its tasks run cold
        broken = "template: %s" % e.__class__.__name__
    # Everything imported so far lives as long as the template: out of
    # the collector's sight, a child's collections do not touch (and so
    # copy) the pages it shares with the template.
    gc.collect()
    gc.freeze()
    gc.enable()
    Template(ctl, zippath, broken, alias).loop()


# ---------------------------------------------------------------- server


def proc_starttime(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(b")") + 2:].split()[19].decode()


# ---------------------------------------------------------------- peers

# SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected, taken
# by the kernel at connect(); the same number on amd64 and arm64.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
# What of a process its forked children inherit and a module could use:
# ids, groups, capabilities, no_new_privs and seccomp (/proc/PID/status).
CONFINEMENT_KEYS = (b"Uid", b"Gid", b"Groups", b"CapInh", b"CapPrm", b"CapEff", b"CapBnd", b"CapAmb",
                    b"NoNewPrivs", b"Seccomp", b"Seccomp_filters")
NAMESPACES = ("mnt", "pid_for_children", "user", "net", "ipc", "uts", "cgroup", "time_for_children")


def confinement(pid):
    """Everything of process pid ("self" for this one) that a child forked
    here would get from this server instead: the peer must match it."""
    with open("/proc/%s/status" % pid, "rb") as f:
        status = f.read()
    out = {}
    for line in status.split(b"\n"):
        k, _, v = line.partition(b":")
        if k in CONFINEMENT_KEYS:
            v = v.split()
            out[k.decode()] = sorted(set(v)) if k == b"Groups" else v
    for k in CONFINEMENT_KEYS:
        out.setdefault(k.decode(), None)
    try:
        with open("/proc/%s/attr/current" % pid, "rb") as f:
            out["lsm"] = f.read()
    except OSError:
        out["lsm"] = None  # no LSM that keeps a label
    for ns in NAMESPACES:
        try:
            st = os.stat("/proc/%s/ns/%s" % (pid, ns))
            out["ns." + ns] = (st.st_dev, st.st_ino)
        except OSError:
            out["ns." + ns] = None
    return out


def peer_pidfd(conn, pid):
    """A pidfd for the peer: the kernel's own (SO_PEERPIDFD) when it has
    one, else pidfd_open of the SO_PEERCRED pid (on such kernels a peer
    that exits before this point could in theory hand its pid on)."""
    try:
        fd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        with open("/proc/self/fdinfo/%d" % fd, "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    if int(line.split()[1]) != pid:
                        os.close(fd)
                        return -1
                    return fd
        os.close(fd)
        return -1
    except OSError:
        pass
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def check_peer(conn, mine):
    """Says why the process at the other end of conn is not one this
    server may run modules for: every credential and confinement a child
    takes from this server (not from the request) must equal the peer's,
    or the peer would get a process with rights it does not have."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    pid = int.from_bytes(creds[0:4], sys.byteorder)
    uid = int.from_bytes(creds[4:8], sys.byteorder)
    gid = int.from_bytes(creds[8:12], sys.byteorder)
    if uid != os.geteuid() or gid != os.getegid():
        return "peer is another user"
    if pid <= 0:
        return "peer not visible"
    pidfd = peer_pidfd(conn, pid)
    if pidfd < 0:
        return "peer not pinned"
    try:
        try:
            theirs = confinement(pid)
            # Alive now, so alive throughout: pid was the peer's all along.
            signal.pidfd_send_signal(pidfd, 0)
        except OSError:
            return "peer gone"
    finally:
        os.close(pidfd)
    for k in sorted(mine):
        if theirs.get(k) != mine[k]:
            return "peer %s differs" % k
    return ""


class Server(object):
    def __init__(self, lsock, workdir, idle, agent, cold):
        self.lsock = lsock
        self.workdir = workdir
        self.idle = idle
        self.agent = agent
        self.cold = cold
        self.templates = {}  # digest -> [pid, ctl socket, last use]
        self.last = time.monotonic()
        self.mine = confinement("self")

    def alive(self):
        if self.agent is None:
            return True
        pid, start = self.agent
        return proc_starttime(pid) == start

    def loop(self):
        poll = select.poll()
        poll.register(self.lsock.fileno(), select.POLLIN)
        while True:
            ev = poll.poll(1000)
            self.reap()
            now = time.monotonic()
            if now - self.last > self.idle or not self.alive():
                return
            for digest, t in list(self.templates.items()):
                if now - t[2] > self.idle:
                    self.retire(digest)
            if ev:
                try:
                    conn, _ = self.lsock.accept()
                except OSError:
                    continue
                self.last = now
                try:
                    self.handle(conn)
                finally:
                    if conn.fileno() >= 0:
                        conn.close()

    def reap(self):
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for digest, t in list(self.templates.items()):
                if t[0] == pid:
                    t[1].close()
                    del self.templates[digest]

    def retire(self, digest):
        t = self.templates.pop(digest)
        t[1].close()  # the template finishes its runs, then exits

    def handle(self, conn):
        conn.settimeout(5)
        try:
            peer = check_peer(conn, self.mine)
        except (OSError, ValueError) as e:
            peer = "peer: %s" % e
        try:
            msg, fds = recv_request(conn, 5)
        except (OSError, ValueError) as e:
            send(conn, {"cold": "request: %s" % e})
            return
        try:
            self.dispatch(conn, msg, fds, peer)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def dispatch(self, conn, msg, fds, peer):
        if self.cold:
            send(conn, {"cold": self.cold})
            return
        if peer:
            send(conn, {"cold": peer})
            return
        if len(fds) != 5:
            send(conn, {"cold": "want 5 descriptors, got %d" % len(fds)})
            return
        try:
            hdr = json.loads(msg)
        except ValueError:
            send(conn, {"cold": "request is not JSON"})
            return
        why = check_header(hdr)
        if why:
            send(conn, {"cold": why})
            return
        try:
            script = read_all(fds[4])
        except (OSError, ValueError) as e:
            send(conn, {"cold": "script: %s" % e})
            return
        digest, data, module = zip_hash(script)
        if digest is None:
            send(conn, {"cold": "not an AnsiballZ module"})
            return
        for attempt in (0, 1):
            t = self.templates.get(digest)
            if t is None:
                t = self.spawn(digest, data, module)
            t[2] = time.monotonic()
            try:
                t[1].sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()] + fds))])
                return
            except OSError:
                self.retire(digest)
        send(conn, {"cold": "no template"})

    def spawn(self, digest, data, module):
        if len(self.templates) >= MAX_TEMPLATES:
            oldest = min(self.templates, key=lambda d: self.templates[d][2])
            self.retire(oldest)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            closers = [ours, self.lsock] + [t[1] for t in self.templates.values()]
            raise BecomeTemplate(theirs, self.workdir, digest, data, module, closers)
        theirs.close()
        t = [pid, ours, time.monotonic()]
        self.templates[digest] = t
        return t


def clean_stale(workdir):
    for name in os.listdir(workdir):
        if not name.startswith("zip-"):
            continue
        try:
            pid = int(name.split("-")[1])
        except (IndexError, ValueError):
            continue
        path = os.path.join(workdir, name)
        try:
            # A child of a killed template may still import from its zip.
            old = time.time() - os.stat(path).st_mtime > 3600
        except OSError:
            continue
        if old and not os.path.exists("/proc/%d" % pid):
            try:
                os.unlink(path)
            except OSError:
                pass


def server_main(argv):
    sockpath, idle, agent = argv[1], float(argv[2]), argv[3]
    workdir = os.path.dirname(sockpath)
    ready = 3
    cold = _supported()
    ag = None
    if agent != "-":
        pid, start = agent.split(":")
        ag = (int(pid), start)
        if proc_starttime(ag[0]) is None:
            ag = None  # /proc hides it (hidepid): rely on the idle timeout
    try:
        os.unlink(sockpath)
    except OSError:
        pass
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(sockpath)
    lsock.listen(128)
    clean_stale(workdir)
    _send_ready(ready, "cold " + cold if cold else "ok")
    gc.collect()
    gc.freeze()
    me = os.getpid()
    try:
        Server(lsock, workdir, idle, ag, cold).loop()
    finally:
        try:
            if os.getpid() != me:
                raise OSError("not the server")
            if os.stat(sockpath).st_ino == os.fstat(lsock.fileno()).st_ino:
                os.unlink(sockpath)
        except OSError:
            pass


# ---------------------------------------------------------------- child


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


def coerce_c_locale():
    """Does what a starting CPython does (PEP 538) when the environment
    leaves LC_CTYPE at the C locale: switches it to a UTF-8 one and says
    so in LC_CTYPE, which the module and its children then see. The
    server and templates made that choice for their own environment."""
    import locale
    env = os.environ
    if env.get("PYTHONCOERCECLOCALE") == "0" or env.get("LC_ALL"):
        return
    try:
        name = locale.setlocale(locale.LC_CTYPE, "")
    except locale.Error:
        name = "C"
    if name not in ("C", "POSIX"):
        return
    for target in ("C.UTF-8", "C.utf8", "UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, target)
        except locale.Error:
            continue
        env["LC_CTYPE"] = target
        return


def child_prepare(run):
    """Makes this forked process look like `python3 script` just started."""
    h = run.hdr
    os.setpgid(0, 0)
    ign = set(h["sigign"])
    signal.signal(signal.SIGINT, signal.SIG_IGN if signal.SIGINT in ign else signal.default_int_handler)
    for s in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN if s in ign else signal.SIG_DFL)
    for res, cur, mx in h["rlimits"]:
        try:
            if resource.getrlimit(res) != (cur, mx):
                resource.setrlimit(res, (cur, mx))
        except (ValueError, OSError):
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, h["nice"])
    except OSError:
        pass
    os.umask(h["umask"])
    os.dup2(run.stdin, 0)
    os.dup2(run.stdout, 1)
    os.dup2(run.stderr, 2)
    os.fchdir(run.cwd)
    source = read_all(run.script)
    # The connection (for the exit report should the template die) moves
    # to the top of the descriptor table, so the payload's own files get
    # the numbers they would have had; it is close-on-exec.
    conn = run.conn.detach()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    high = min(soft if soft != resource.RLIM_INFINITY else 1024, 1 << 20) - 1
    if high > conn:
        conn = os.dup2(conn, high, inheritable=False)
    os.set_inheritable(conn, False)
    os.closerange(3, conn)
    os.closerange(conn + 1, 1 << 20)

    env = {}
    for kv in h["env"]:
        k, _, v = kv.partition("=")
        env[k.encode("utf-8", "surrogateescape")] = v.encode("utf-8", "surrogateescape")
    if COERCED_LC_CTYPE is not None:
        env[b"LC_CTYPE"] = COERCED_LC_CTYPE.encode("utf-8", "surrogateescape")
    os.environb.clear()
    os.environb.update(env)
    coerce_c_locale()
    tempfile.tempdir = None

    argv = h["argv"]
    tty = [os.isatty(fd) for fd in (0, 1)]
    old = (sys.stdin, sys.stdout, sys.stderr)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.open(0, "rb", closefd=False), encoding=old[0].encoding, errors=old[0].errors, line_buffering=tty[0])
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.open(1, "wb", closefd=False), encoding=old[1].encoding, errors=old[1].errors, line_buffering=tty[1])
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.open(2, "wb", closefd=False), encoding=old[2].encoding, errors=old[2].errors, line_buffering=True)
    for s, name in zip((sys.stdin, sys.stdout, sys.stderr), ("<stdin>", "<stdout>", "<stderr>")):
        s.mode = "r" if name == "<stdin>" else "w"

    main = types.ModuleType("__main__")
    main.__annotations__ = {}
    main.__builtins__ = builtins
    if h["script"]:
        path = os.path.abspath(argv[1])
        sys.argv = list(argv[1:])
        sys.path[:] = [os.path.dirname(os.path.realpath(argv[1]))] + BASE_PATH
        main.__file__ = path
        main.__cached__ = None
        import importlib.machinery
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
        filename = path
    else:
        sys.argv = [""]
        sys.path[:] = [""] + BASE_PATH
        main.__file__ = "<stdin>"
        main.__cached__ = None
        import importlib.machinery
        main.__loader__ = importlib.machinery.BuiltinImporter
        filename = "<stdin>"
    sys.orig_argv = list(argv)
    sys.modules["__main__"] = main
    return conn, source, filename, main


def _flush_files():
    """Flushes the file objects the payload left open, as their
    destructors would at interpreter exit."""
    gc.collect()
    for kind in (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom):
        for o in gc.get_objects():
            if isinstance(o, kind) and o not in (sys.stdout, sys.stderr):
                try:
                    if not o.closed:
                        o.flush()
                except Exception:
                    pass


def finish(conn, status, sig=0):
    """Ends the child the way Py_FinalizeEx ends an interpreter, minus
    tearing down every module: that would write to (and so copy) every
    page shared with the template, the most expensive part of a run."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
    except BaseException:
        pass
    try:
        import atexit
        atexit._run_exitfuncs()
    except BaseException:
        pass
    _flush_files()
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception as e:
            if s is sys.stdout:
                try:
                    sys.stderr.write("Exception ignored in: %r\n%s: %s\n" % (s, e.__class__.__name__, e))
                    sys.stderr.flush()
                except Exception:
                    pass
            status = 120
    if sig:
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    try:
        os.write(conn, json.dumps({"exit": status & 0xFF}).encode())
    except OSError:
        pass
    os._exit(status & 0xFF)


# A name in place of the archive while a wrapper is compiled.
ZIPDATA_STANDIN = "gomuxZIPDATAstandin"
NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"


def compile_script(source, filename):
    """compile(source, filename, "exec", dont_inherit=True), faster for an
    AnsiballZ wrapper: its archive, a string literal of a hundred
    kilobytes, is where the compiler spends most of its time. The wrapper
    is compiled with a short stand-in in the literal's place and the
    archive is put back as that constant: the same code, constants, names
    and line numbers (the literal has no newline and no escape), only the
    end column of that one statement differs. When the stand-in is not
    exactly one whole string constant (the text was not one plain
    literal), or on any other doubt, the source is compiled as it is."""
    span = zipdata_span(source, check=False)
    if span is not None and span[1] - span[0] >= 4096 and ZIPDATA_STANDIN.encode() not in source:
        data = source[span[0]:span[1]]
        if data.isascii() and b"\\" not in data and b"\n" not in data and b"\r" not in data:
            try:
                code = compile(source[:span[0]] + ZIPDATA_STANDIN.encode() + source[span[1]:], filename, "exec", dont_inherit=True)
            except SyntaxError:
                code = None
            if code is not None:
                value = data.decode("ascii")
                # The compiler interns constants made of name characters.
                if b"+" not in data and b"/" not in data and not data.translate(None, NAME_CHARS):
                    value = sys.intern(value)
                code, n = _put_back(code, value)
                if n == 1:
                    return code
    return compile(source, filename, "exec", dont_inherit=True)


def _put_back(code, value):
    """code with the stand-in constant replaced by value, and how many
    stand-ins there were."""
    consts = []
    n = 0
    for c in code.co_consts:
        if type(c) is str and c == ZIPDATA_STANDIN:
            c = value
            n += 1
        elif isinstance(c, types.CodeType):
            c, k = _put_back(c, value)
            n += k
        consts.append(c)
    if n == 0:
        return code, 0
    return code.replace(co_consts=tuple(consts)), n


def child_main(run):
    """Runs the payload and ends the process; never returns."""
    conn, source, filename, main = child_prepare(run)
    del run
    try:
        code = compile_script(source, filename)
    except SyntaxError:
        t, v, tb = sys.exc_info()
        sys.excepthook(t, v, None)
        finish(conn, 1)
    del source
    try:
        exec(code, main.__dict__)
    except SystemExit as e:
        c = e.code
        if c is not None and not isinstance(c, int):
            try:
                sys.stderr.write(str(c) + "\n")
            except Exception:
                pass
        finish(conn, _exit_code(c))
    except KeyboardInterrupt:
        t, v, tb = sys.exc_info()
        sys.excepthook(t, v.with_traceback(tb.tb_next), tb.tb_next)
        finish(conn, 130, signal.SIGINT)
    except BaseException:
        t, v, tb = sys.exc_info()
        sys.excepthook(t, v.with_traceback(tb.tb_next), tb.tb_next)
        finish(conn, 1)
    finish(conn, 0)


def main(argv):
    if len(argv) != 4:
        sys.stderr.write("usage: forkserver.py SOCKET IDLE AGENT\n")
        return None
    try:
        server_main(argv)
        return None
    except BecomeTemplate as b:
        tmpl = b
    for s in tmpl.closers:
        s.close()
    try:
        template_main(tmpl.ctl, tmpl.workdir, tmpl.digest, tmpl.data, tmpl.module)
    except Exit as e:
        return e.run
    return None


if __name__ == "__main__":
    _run = main(sys.argv)
    if _run is None:
        os._exit(0)
    del main
    child_main(_run)
