package upstream

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"
	sshagent "golang.org/x/crypto/ssh/agent"
)

// dial connects and logs in. The connection's global requests and
// channel opens are returned for the caller to serve (incoming.serve),
// rather than given to gossh.Client, which would spend a goroutine on
// each: so the client's HandleChannelOpen and Listen receive nothing.
//
// authStarted reports that the target had asked for a public key, so a
// failure after it is the login's (see loginOutcomeOf).
func (p *Pool) dial(ctx context.Context, key poolKey) (_ *gossh.Client, _ incoming, authStarted bool, _ error) {
	timeout := p.cfg.ConnectTimeout
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Host keys are looked up by the name the rule matched; the TCP
	// connection goes to the address policy resolved and checked, with no
	// second lookup.
	cb, algos, err := p.keys.clientSettings(key.host)
	if err != nil {
		return nil, incoming{}, false, err
	}
	signers, closeAgent, err := p.signers(key)
	if err != nil {
		return nil, incoming{}, false, err
	}
	defer closeAgent()
	var started atomic.Bool
	auth := []gossh.AuthMethod{gossh.PublicKeysCallback(func() ([]gossh.Signer, error) {
		started.Store(true)
		return signers, nil
	})}
	var d net.Dialer
	// Errors name no target: the caller does ("cannot reach H as U"),
	// and the net and ssh packages name the step ("dial tcp A: ...",
	// "ssh: handshake failed: ...").
	nc, err := d.DialContext(ctx, "tcp", key.dial)
	if err != nil {
		return nil, incoming{}, false, err
	}
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	// Cancelling ctx (pool closing) aborts a handshake in progress.
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	cfg := &gossh.ClientConfig{
		User:              key.user,
		Auth:              auth,
		HostKeyCallback:   cb,
		HostKeyAlgorithms: algos,
		ClientVersion:     "SSH-2.0-gomux",
		Timeout:           timeout,
	}
	conn, chans, reqs, err := gossh.NewClientConn(nc, key.host, cfg)
	if err != nil {
		nc.Close()
		return nil, incoming{}, started.Load(), err
	}
	nc.SetDeadline(time.Time{})
	noReqs, noChans := make(chan *gossh.Request), make(chan gossh.NewChannel)
	close(noReqs)
	close(noChans)
	return gossh.NewClient(conn, noChans, noReqs), incoming{reqs, chans}, true, nil
}

// signers are the keys offered, for key's credential: a fresh user
// certificate when it has a CA, then the identity files, then the
// ssh-agent's keys. The agent socket is dialled per connection so a
// restarted agent is picked up.
func (p *Pool) signers(key poolKey) ([]gossh.Signer, func(), error) {
	cred := p.creds[key.cred]
	var signers []gossh.Signer
	if cred.ca != nil {
		s, err := signUserCert(cred.ca, key.person, cred.prefix+key.user, key.forwarding, p.cfg.UserCertValidity)
		if err != nil {
			return nil, nil, err
		}
		signers = append(signers, s)
	}
	signers = append(signers, cred.signers...)
	closer := func() {}
	if cred.useAgent {
		if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" {
			c, err := net.Dial("unix", sock)
			if err == nil {
				closer = func() { c.Close() }
				if s, err := sshagent.NewClient(c).Signers(); err == nil {
					signers = append(signers, s...)
				}
			}
		}
	}
	if len(signers) == 0 {
		closer()
		return nil, nil, fmt.Errorf("no upstream credentials in %q: set identity_files, user_ca or run an ssh-agent", key.cred)
	}
	return signers, closer, nil
}
