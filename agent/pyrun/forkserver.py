# gomux fork server: a warm Python for Ansible modules on this target.
#
# Started by `gomux-agent pyrun` (see DESIGN.md beside this file) as
#   <interpreter> forkserver.py <socket> <idle-seconds> <agent PID:starttime or ->
# with fd 3 a pipe on which it says "ok" once it listens, or "cold <why>".
#
# Process tree: the server accepts requests; per AnsiballZ ZIPDATA it forks a
# template that has imported ansible.module_utils.basic from that zip; per run
# the template forks a child that becomes the payload's __main__ and never
# comes back, so nothing one task does is seen by the next. Every forked
# process ends in os._exit (template_process, child_main's finish): none
# returns into the frames of the process it was forked from.
#
# Nothing here may crash a task: any doubt before a run is committed answers
# "cold", and the client then runs the interpreter itself.
#
# The file must parse on any Python 3, so that an older one still answers
# "cold" (unsupported): no f-strings, no walrus, no dataclasses.
#
# Layout, as the Go side: constants and named types; the wire; requests;
# reading a wrapper; peers; the server; templates; the child; main.

import array
import atexit
import base64
import builtins
import collections
import fcntl
import gc
import hashlib
import importlib
import importlib.machinery
import io
import json
import locale
import os
import re
import resource
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import types
import warnings
import zipfile
import zipimport

# The request version this server speaks (the "v" field): Protocol in
# pyrun.go. TestForkServerVersionAgrees holds the two equal.
VERSION = 1
MAX_SCRIPT = 64 << 20
MAX_TEMPLATES = 16

# What AnsiballZ's wrapper imports before basic that this server does not
# use itself (it uses base64, shutil, tempfile, zipfile): imported once by
# the server (preload), so no run pays for it.
WRAPPER_IMPORTS = ("runpy",)

ZIPDATA_RE = re.compile(rb'\n\s*ZIPDATA = """([A-Za-z0-9+/=\s]*)"""')
MODULE_RE = re.compile(rb"runpy\.run_module\(mod_name='([A-Za-z0-9_.]+)'")
# The names the wrapper unpacks its archive under.
PAYLOAD_RE = re.compile(rb"tempfile\.mkdtemp\(prefix='(ansible_[A-Za-z0-9_.]+_payload_)'\)")
ZIPNAME_RE = re.compile(rb"os\.path\.join\(temp_path, '(ansible_[A-Za-z0-9_.]+_payload\.zip)'\)")
# Top-level imports of module_utils in a module's source: the template
# imports them too, as the module would before anything else.
UTILS_RE = re.compile(r"^(?:from\s+(ansible(?:_collections)?\.[\w.]*module_utils[\w.]*)\s+import|import\s+(ansible\.module_utils[\w.]*)\s*$)", re.M)
# A module's own file in an AnsiballZ archive.
MODFILE_RE = re.compile(r"^(?:ansible/modules|ansible_collections/[^/]+/[^/]+/plugins/modules)/(?!__init__)([A-Za-z0-9_]+)\.py$")
WRAPPER_MARK = b"_ANSIBALLZ_WRAPPER = True"

# ZIPDATA_RE's pieces, for zipdata_span: matching the archive's characters
# one by one in the regex engine cost half a millisecond per run.
ZIPDATA_NAME = b'ZIPDATA = """'
ZIPDATA_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\n\r\x0b\x0c"
SPACE = b" \t\n\r\x0b\x0c"  # \s of a bytes pattern

# A name in place of the archive while a wrapper is compiled.
ZIPDATA_STANDIN = "gomuxZIPDATAstandin"
# The file name the template compiles an archive's sources under
# (precompile); a run's zipimport puts the real one in their place.
CODE_STANDIN_NAME = "<gomux precompiled>"
NAME_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"

# SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected, taken
# by the kernel at connect(); the same number on amd64 and arm64.
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
# What of a process its forked children inherit and a module could use:
# ids, groups, capabilities, no_new_privs and seccomp (/proc/PID/status).
CONFINEMENT_KEYS = (b"Uid", b"Gid", b"Groups", b"CapInh", b"CapPrm", b"CapEff", b"CapBnd", b"CapAmb",
                    b"NoNewPrivs", b"Seccomp", b"Seccomp_filters")
NAMESPACES = ("mnt", "pid_for_children", "user", "net", "ipc", "uts", "cgroup", "time_for_children")

# sys.path as a fresh `python3 script` has it, without its first entry
# (the script's directory, or '' for stdin).
BASE_PATH = list(sys.path[1:])

# PEP 538: an interpreter started in the C locale sets LC_CTYPE in its own
# environment. Every client of this server has the locale variables the
# server started with (they are part of its key), so a fresh interpreter
# of theirs would have done the same.
COERCED_LC_CTYPE = os.environ.get("LC_CTYPE")

# A client's request, checked by parse_request: what the child must look
# like. rlimits is a list of [resource, soft, hard]; sigign the signals
# the client's interpreter would have inherited ignored; ctty, when not 0,
# is the TIOCSCTTY ioctl number (the client's, for this machine) with
# which the child takes its stdin, a terminal, as its controlling
# terminal in a session of its own.
Request = collections.namedtuple(
    "Request", "argv script env umask nice uid euid gid egid groups rlimits sigign ctty")

# What the server reads from an AnsiballZ wrapper. digest names the
# template (archive and names); module is "" when the wrapper's
# run_module line could not be read; prefix and zipname (the payload
# directory's prefix and the archive's name) are both "" unless both
# could be read.
Wrapper = collections.namedtuple("Wrapper", "digest zipdata module prefix zipname")

# The agent a server lives with: its PID and its start time in /proc.
Agent = collections.namedtuple("Agent", "pid start")


class Run(object):
    """One task: the client's request and the descriptors it passed."""

    def __init__(self, req, conn, fds):
        self.req = req
        self.conn = conn  # socket
        self.stdin, self.stdout, self.stderr, self.cwd, self.script = fds
        self.pid = 0
        self.pidfd = -1
        self.state = "ready"

    def close_fds(self):
        for fd in (self.stdin, self.stdout, self.stderr, self.cwd, self.script):
            close_quietly(fd)
        self.stdin = self.stdout = self.stderr = self.cwd = self.script = -1


class TemplateHandle(object):
    """The server's end of one template: its PID, the socket the server
    forwards requests on, and when it last had one (for the idle timeout
    and to make room for a new one)."""

    __slots__ = ("pid", "ctl", "last_use")

    def __init__(self, pid, ctl):
        self.pid = pid
        self.ctl = ctl
        self.last_use = time.monotonic()


# ---------------------------------------------------------------- wire


def close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


def send(conn, obj):
    try:
        conn.send(json.dumps(obj, separators=(",", ":")).encode())
        return True
    except OSError:
        return False


def send_ready(fd, msg):
    """Says msg on the start-up pipe pyrun waits on, and closes it."""
    try:
        os.write(fd, msg.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


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


# ---------------------------------------------------------------- requests


def parse_request(msg):
    """The request in msg: (Request, "") when this server can serve it,
    else (None, why not)."""
    try:
        h = json.loads(msg)
    except ValueError:
        return None, "request is not JSON"
    why = check_header(h)
    if why:
        return None, why
    return Request(argv=h["argv"], script=h["script"], env=h["env"], umask=h["umask"], nice=h["nice"],
                   uid=h["uid"], euid=h["euid"], gid=h["gid"], egid=h["egid"], groups=h["groups"],
                   rlimits=h["rlimits"], sigign=h["sigign"], ctty=h.get("ctty", 0)), ""


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
    ctty = h.get("ctty", 0)
    if not isinstance(ctty, int) or isinstance(ctty, bool) or ctty < 0:
        return "bad ctty"
    return ""


def feasible(req):
    """Says why this process cannot give a child the client's limits."""
    if os.geteuid() == 0:
        return ""
    for res, cur, mx in req.rlimits:
        try:
            _, omx = resource.getrlimit(res)
        except (ValueError, OSError):
            return "rlimit %d" % res
        if omx != resource.RLIM_INFINITY and (mx == resource.RLIM_INFINITY or mx > omx):
            return "rlimit %d above this server's" % res
    if req.nice < os.getpriority(os.PRIO_PROCESS, 0):
        return "nice below this server's"
    return ""


# ---------------------------------------------------------------- wrapper


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


def read_wrapper(script):
    """The Wrapper of an AnsiballZ wrapper's source; None for anything else."""
    if WRAPPER_MARK not in script:
        return None
    span = zipdata_span(script)
    if span is None:
        return None
    start, end = span
    data = script[start:end]
    mod = _search_around(MODULE_RE, script, start, end)
    module = mod.group(1).decode() if mod else ""
    prefix, zipname = _search_around(PAYLOAD_RE, script, start, end), _search_around(ZIPNAME_RE, script, start, end)
    name = module
    if prefix and zipname:
        prefix, zipname = prefix.group(1).decode(), zipname.group(1).decode()
        name += "\0" + prefix + "\0" + zipname
    else:
        prefix = zipname = ""
    digest = hashlib.sha256(data + b"\0" + name.encode()).hexdigest()
    return Wrapper(digest=digest, zipdata=data, module=module, prefix=prefix, zipname=zipname)


# ---------------------------------------------------------------- peers


def proc_starttime(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(b")") + 2:].split()[19].decode()


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


# ---------------------------------------------------------------- server


def unsupported():
    """Says why this interpreter cannot serve warm runs ("" if it can)."""
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


def preload():
    """Imports WRAPPER_IMPORTS, so templates and runs inherit them."""
    for name in WRAPPER_IMPORTS:
        importlib.import_module(name)


class Server(object):
    """Accepts requests on the listening socket, checks them and the peer,
    and forwards each to the template of its wrapper's archive."""

    def __init__(self, lsock, workdir, idle, agent, cold):
        self.lsock = lsock
        self.workdir = workdir
        self.idle = idle
        self.agent = agent  # Agent, or None: rely on the idle timeout
        self.cold = cold
        self.templates = {}  # Wrapper.digest -> TemplateHandle
        self.last = time.monotonic()
        self.mine = confinement("self")

    def alive(self):
        if self.agent is None:
            return True
        return proc_starttime(self.agent.pid) == self.agent.start

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
                if now - t.last_use > self.idle:
                    self.retire(digest)
            if ev:
                self.accept(now)

    def accept(self, now):
        try:
            conn, _ = self.lsock.accept()
        except OSError:
            return
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
                if t.pid == pid:
                    t.ctl.close()
                    del self.templates[digest]

    def retire(self, digest):
        t = self.templates.pop(digest)
        t.ctl.close()  # the template finishes its runs, then exits

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
            why, wrapper = self.check(msg, fds, peer)
            if why:
                send(conn, {"cold": why})
            else:
                self.forward(conn, msg, fds, wrapper)
        finally:
            for fd in fds:
                close_quietly(fd)

    def check(self, msg, fds, peer):
        """Says why this request is not served warm, or gives its Wrapper."""
        if self.cold:
            return self.cold, None
        if peer:
            return peer, None
        if len(fds) != 5:
            return "want 5 descriptors, got %d" % len(fds), None
        _, why = parse_request(msg)
        if why:
            return why, None
        try:
            script = read_all(fds[4])
        except (OSError, ValueError) as e:
            return "script: %s" % e, None
        wrapper = read_wrapper(script)
        if wrapper is None:
            return "not an AnsiballZ module", None
        return "", wrapper

    def forward(self, conn, msg, fds, wrapper):
        """Hands the request, its connection and descriptors to the
        wrapper's template, starting one if there is none; a template
        that cannot take it is retired and replaced once."""
        for attempt in (0, 1):
            t = self.templates.get(wrapper.digest)
            if t is None:
                t = self.spawn(wrapper, conn, fds)
            t.last_use = time.monotonic()
            try:
                t.ctl.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [conn.fileno()] + fds))])
                return
            except OSError:
                self.retire(wrapper.digest)
        send(conn, {"cold": "no template"})

    def spawn(self, wrapper, conn, fds):
        if len(self.templates) >= MAX_TEMPLATES:
            oldest = min(self.templates, key=lambda d: self.templates[d].last_use)
            self.retire(oldest)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            inherited = [ours, self.lsock, conn] + [t.ctl for t in self.templates.values()]
            template_process(theirs, self.workdir, wrapper, inherited, fds)
        theirs.close()
        t = TemplateHandle(pid, ours)
        self.templates[wrapper.digest] = t
        return t


def signal_run(run, sig):
    """Signals the run's process group; a run that makes its own session
    (a terminal to take) may not have made it yet: then the run alone."""
    try:
        os.killpg(run.pid, sig)
    except ProcessLookupError:
        try:
            os.kill(run.pid, sig)
        except (OSError, ValueError):
            pass
    except (OSError, ValueError):
        pass


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


def parse_agent(arg):
    """The Agent named by "PID:STARTTIME", or None for "-" or an agent
    /proc does not show (hidepid): then only the idle timeout ends the
    server."""
    if arg == "-":
        return None
    pid, start = arg.split(":")
    agent = Agent(int(pid), start)
    if proc_starttime(agent.pid) is None:
        return None
    return agent


def listen(sockpath):
    try:
        os.unlink(sockpath)
    except OSError:
        pass
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lsock.bind(sockpath)
    lsock.listen(128)
    return lsock


def server_main(argv):
    sockpath, idle, agent = argv[1], float(argv[2]), parse_agent(argv[3])
    workdir = os.path.dirname(sockpath)
    ready = 3
    cold = unsupported()
    preload()
    lsock = listen(sockpath)
    clean_stale(workdir)
    send_ready(ready, "cold " + cold if cold else "ok")
    gc.collect()
    gc.freeze()
    try:
        Server(lsock, workdir, idle, agent, cold).loop()
    finally:
        # Only the server gets here: every process forked from it ends
        # in os._exit. Another server may have taken the path since.
        try:
            if os.stat(sockpath).st_ino == os.fstat(lsock.fileno()).st_ino:
                os.unlink(sockpath)
        except OSError:
            pass


# ---------------------------------------------------------------- template


def template_process(ctl, workdir, wrapper, inherited, fds):
    """Makes this process, just forked from the server, the template of
    wrapper, and ends it when the template is done: never returns. It
    first closes what it took from the server: the sockets in inherited
    (the server's, the other templates', the client's) and the request's
    descriptors (the server forwards them to this template itself)."""
    status = 0
    try:
        for s in inherited:
            s.close()
        for fd in fds:
            close_quietly(fd)
        template_main(ctl, workdir, wrapper)
    except BaseException:
        # As an uncaught exception would end the interpreter.
        status = 1
        try:
            sys.excepthook(*sys.exc_info())
            sys.stderr.flush()
        except BaseException:
            pass
    os._exit(status)


def template_main(ctl, workdir, wrapper):
    zippath, alias, broken = load_archive(workdir, wrapper)
    # Everything imported so far lives as long as the template: out of
    # the collector's sight, a child's collections do not touch (and so
    # copy) the pages it shares with the template.
    gc.collect()
    gc.freeze()
    gc.enable()
    Template(ctl, zippath, broken, alias).loop()


def load_archive(workdir, wrapper):
    """Writes the wrapper's archive to a private file and imports basic
    (and the module's top-level module_utils) from it. Returns the file's
    path, the alias directory to remove with the template (or None), and
    why runs of this template must go cold ("" if they need not)."""
    zippath = os.path.join(workdir, "zip-%d-%s.zip" % (os.getpid(), wrapper.digest[:16]))
    alias = None
    try:
        fd = os.open(zippath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(wrapper.zipdata))
        importpath, alias = payload_alias(zippath, wrapper)
        sys.path.insert(0, importpath)
        gc.disable()
        try:
            __import__("ansible.module_utils.basic")
            preimport(zippath, wrapper.module)
        finally:
            sys.path.remove(importpath)
        install_compiled(precompile(zippath))
    except BaseException as e:  # a broken zip makes its tasks run cold
        return zippath, alias, "template: %s" % e.__class__.__name__
    return zippath, alias, ""


def precompile(zippath):
    """Compiles, once in the template, the archive's sources that are not
    imported yet (the module itself, its package, module_utils it imports
    later): a run's zipimport compiles every source it loads, runpy's
    module twice (get_filename and get_code), from the very same bytes,
    since a template serves one archive. Returns source bytes -> code,
    compiled as zipimport compiles under the stand-in file name. A source
    that warns while compiling is left out, so that a run compiles it
    itself and warns as the interpreter would."""
    compile_source = getattr(zipimport, "_compile_source", None)
    cache = {}
    if compile_source is None:
        return cache
    try:
        with zipfile.ZipFile(zippath) as z:
            for name in z.namelist():
                if not name.endswith(".py"):
                    continue
                mod = name[:-3].replace("/", ".")
                if mod.endswith(".__init__"):
                    mod = mod[:-len(".__init__")]
                if mod in sys.modules:
                    continue
                data = z.read(name)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        code = compile_source(CODE_STANDIN_NAME, data)
                    except Exception:
                        continue
                if not caught:
                    cache[data] = code
    except (OSError, ValueError, zipfile.BadZipFile):
        return {}
    return cache


def install_compiled(cache):
    """Makes zipimport take precompile's code for a source it holds, with
    the file name zipimport asked for, and compile anything else."""
    if not cache:
        return
    compile_source = zipimport._compile_source

    def _compile_source(pathname, source):
        code = cache.get(source)
        if code is None:
            return compile_source(pathname, source)
        return with_filename(code, pathname)

    zipimport._compile_source = _compile_source


def with_filename(code, filename):
    """code, and every code object among its constants, with co_filename
    filename: what compiling its source under that name gives."""
    consts = tuple(with_filename(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def payload_alias(zippath, wrapper):
    """Gives the archive the name AnsiballZ unpacks it under,
    <tmp>/ansible_<module>_payload_<random>/ansible_<module>_payload.zip
    (a symlink), so the file names modules see in tracebacks and __file__
    read as without gomux: as the wrapper spells them when they could be
    read, else from the archive's one module. Returns the path to import
    from and the directory to remove with the template (None: no alias)."""
    if wrapper.prefix and wrapper.zipname:
        return _link_payload(zippath, wrapper.prefix, wrapper.zipname)
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
        req, why = parse_request(msg)
        run = Run(req, conn, fds[1:])
        why = why or self.broken or feasible(req)
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
            # The client is gone: so is the task, as with a killed sshd;
            # unless it left with the run's own exit report ("done"),
            # when what the run left running in its group lives on as
            # it would after the interpreter's exit.
            if run.state != "done":
                signal_run(run, signal.SIGKILL)
            poll.unregister(run.conn.fileno())
            return
        if isinstance(m, dict) and m.get("done") == 1:
            run.state = "done"
            return
        if isinstance(m, dict) and isinstance(m.get("signal"), int):
            signal_run(run, m["signal"])

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
            # may reuse (take_descriptors closes the descriptors).
            self.ctl.detach()
            for r in self.runs.values():
                if r is not run:
                    r.conn.detach()
            child_main(run)
        if not run.req.ctty:
            # Set here too, so the group exists before the child runs; a
            # run that takes a terminal makes its own session instead
            # (set_process_state), which a group leader could not.
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


# ---------------------------------------------------------------- child


def child_main(run):
    """Runs the payload in this process, just forked from a template, and
    ends the process the way the interpreter would have ended: never
    returns. Every way out is finish (or, before the run's descriptors
    are in place, os._exit after the traceback)."""
    run_pid = os.getpid()
    try:
        conn, source, filename, main = child_prepare(run)
    except BaseException:
        # As an uncaught exception at the top would end the interpreter.
        try:
            sys.excepthook(*sys.exc_info())
            sys.stderr.flush()
        except BaseException:
            pass
        os._exit(1)
    del run
    try:
        code = compile_script(source, filename)
    except BaseException:
        # A SyntaxError as the interpreter reports it; anything else
        # (a NUL byte is a ValueError here) the same way, so the run
        # still ends in finish.
        t, v, tb = sys.exc_info()
        sys.excepthook(t, v, None)
        finish(conn, run_pid, 1)
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
        finish(conn, run_pid, _exit_code(c))
    except KeyboardInterrupt:
        t, v, tb = sys.exc_info()
        sys.excepthook(t, v.with_traceback(tb.tb_next), tb.tb_next)
        finish(conn, run_pid, 130, signal.SIGINT)
    except BaseException:
        t, v, tb = sys.exc_info()
        sys.excepthook(t, v.with_traceback(tb.tb_next), tb.tb_next)
        finish(conn, run_pid, 1)
    finish(conn, run_pid, 0)


def child_prepare(run):
    """Makes this forked process look like `python3 script` just started.
    Returns the report connection's descriptor, the script's source, its
    file name and the fresh __main__ to run it in."""
    req = run.req
    set_process_state(req)
    source = take_descriptors(run)
    take_terminal(req)
    conn = keep_report_conn(run.conn)
    set_environment(req.env)
    set_stdio()
    main, filename = fresh_main(req)
    return conn, source, filename, main


def set_process_state(req):
    """Process group, signal dispositions, limits, priority and umask as
    the client's interpreter would have had them."""
    if req.ctty:
        os.setsid()  # a new session, to take the terminal in (take_terminal)
    else:
        os.setpgid(0, 0)
    ign = set(req.sigign)
    signal.signal(signal.SIGINT, signal.SIG_IGN if signal.SIGINT in ign else signal.default_int_handler)
    for s in (signal.SIGHUP, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN if s in ign else signal.SIG_DFL)
    for res, cur, mx in req.rlimits:
        try:
            if resource.getrlimit(res) != (cur, mx):
                resource.setrlimit(res, (cur, mx))
        except (ValueError, OSError):
            pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, req.nice)
    except OSError:
        pass
    os.umask(req.umask)


def take_terminal(req):
    """Makes stdin, the run's terminal, its controlling terminal, as the
    interpreter has it in the shell's session without gomux (the agent
    left the terminal free for it). A terminal another session holds
    stays theirs: the run then has none, as before."""
    if not req.ctty:
        return
    try:
        fcntl.ioctl(0, req.ctty, 0)
    except OSError:
        pass


def take_descriptors(run):
    """The client's stdin, stdout, stderr as 0, 1, 2 and its working
    directory; returns the script's source."""
    os.dup2(run.stdin, 0)
    os.dup2(run.stdout, 1)
    os.dup2(run.stderr, 2)
    os.fchdir(run.cwd)
    return read_all(run.script)


def keep_report_conn(sock):
    """Closes every descriptor above 2 but the connection (for the exit
    report should the template die), which moves to the top of the
    descriptor table, so the payload's own files get the numbers they
    would have had; it is close-on-exec. Returns its number."""
    conn = sock.detach()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    high = min(soft if soft != resource.RLIM_INFINITY else 1024, 1 << 20) - 1
    if high > conn:
        conn = os.dup2(conn, high, inheritable=False)
    os.set_inheritable(conn, False)
    os.closerange(3, conn)
    os.closerange(conn + 1, 1 << 20)
    return conn


def set_environment(kvs):
    """The client's environment, as the interpreter would have left it at
    start: LC_CTYPE coerced as the server's was, and as the C locale
    would coerce it; tempfile's cached directory forgotten."""
    env = {}
    for kv in kvs:
        k, _, v = kv.partition("=")
        env[k.encode("utf-8", "surrogateescape")] = v.encode("utf-8", "surrogateescape")
    if COERCED_LC_CTYPE is not None:
        env[b"LC_CTYPE"] = COERCED_LC_CTYPE.encode("utf-8", "surrogateescape")
    os.environb.clear()
    os.environb.update(env)
    coerce_c_locale()
    tempfile.tempdir = None


def coerce_c_locale():
    """Does what a starting CPython does (PEP 538) when the environment
    leaves LC_CTYPE at the C locale: switches it to a UTF-8 one and says
    so in LC_CTYPE, which the module and its children then see. The
    server and templates made that choice for their own environment."""
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


def set_stdio():
    """sys.stdin, stdout and stderr on the new 0, 1 and 2, buffered as a
    fresh interpreter buffers them (line by line on a terminal)."""
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


def fresh_main(req):
    """A new __main__ for the script (or for stdin), with sys.argv and
    sys.path as the interpreter sets them. Returns it and the file name
    to compile the script under."""
    argv = req.argv
    main = types.ModuleType("__main__")
    main.__annotations__ = {}
    main.__builtins__ = builtins
    if req.script:
        path = os.path.abspath(argv[1])
        sys.argv = list(argv[1:])
        sys.path[:] = [os.path.dirname(os.path.realpath(argv[1]))] + BASE_PATH
        main.__file__ = path
        main.__cached__ = None
        main.__loader__ = importlib.machinery.SourceFileLoader("__main__", path)
        filename = path
    else:
        sys.argv = [""]
        sys.path[:] = [""] + BASE_PATH
        main.__file__ = "<stdin>"
        main.__cached__ = None
        main.__loader__ = importlib.machinery.BuiltinImporter
        filename = "<stdin>"
    sys.orig_argv = list(argv)
    sys.modules["__main__"] = main
    return main, filename


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


def _exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


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


def finish(conn, run_pid, status, sig=0):
    """Ends the child the way Py_FinalizeEx ends an interpreter, minus
    tearing down every module: that would write to (and so copy) every
    page shared with the template, the most expensive part of a run.
    The one way a run's process ends once its descriptors are in place.
    Only the run itself (run_pid) reports its exit: a copy the module
    forked that ends the same way must not, as pyrun exits on the first
    report it reads."""
    try:
        if "threading" in sys.modules:
            sys.modules["threading"]._shutdown()
    except BaseException:
        pass
    try:
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
    if os.getpid() == run_pid:
        try:
            os.write(conn, json.dumps({"exit": status & 0xFF}).encode())
        except OSError:
            pass
    os._exit(status & 0xFF)


# ---------------------------------------------------------------- main


def main(argv):
    """The server's process; the templates and runs forked from it end
    in os._exit and never return here."""
    if len(argv) != 4:
        sys.stderr.write("usage: forkserver.py SOCKET IDLE AGENT\n")
        return
    server_main(argv)


if __name__ == "__main__":
    main(sys.argv)
    # Skip the interpreter's teardown: nothing is left to flush.
    os._exit(0)
