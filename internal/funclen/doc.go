// Package funclen holds a test that keeps functions in agent/, proxy/ and
// shim/ short enough to read in one screen. A function longer than
// MaxLines needs a comment line starting with "long:" in its doc comment
// that says why it stays long; a reviewer then sees the reason where the
// length is.
package funclen

// MaxLines is the longest a function may be, counted from its func line to
// its closing brace, before it needs a "long:" reason.
const MaxLines = 80
