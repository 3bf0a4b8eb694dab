package agent

import "strings"

// errPrefix starts the message of every error this package returns, once:
// an error of the package that wraps another one drops the inner one's
// prefix, so a failure reads "agent: handshake: connection closed before
// the agent replied: EOF", not "agent: handshake: agent: read reply: EOF".
const errPrefix = "agent: "

// wrappedError is an error of this package wrapping another with the
// context of one layer. errors.Is and errors.As see err and, when set,
// kind (a sentinel such as ErrNotStarted).
type wrappedError struct {
	what string // the layer's context, without errPrefix
	kind error
	err  error
}

// Error is the layer's words, then the wrapped error's without its prefix.
func (e *wrappedError) Error() string {
	return errPrefix + e.what + ": " + strings.TrimPrefix(e.err.Error(), errPrefix)
}

// Unwrap gives errors.Is and errors.As the sentinel and the cause.
func (e *wrappedError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

// wrap adds one layer's context to err: "agent: what: <err's words>".
func wrap(what string, err error) error {
	return &wrappedError{what: what, err: err}
}

// wrapKind is err under the sentinel kind: "agent: <kind's words>: <err's
// words>", matching both with errors.Is.
func wrapKind(kind, err error) error {
	return &wrappedError{what: strings.TrimPrefix(kind.Error(), errPrefix), kind: kind, err: err}
}
