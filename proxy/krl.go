package proxy

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"

	"golang.org/x/crypto/cryptobyte"
	gossh "golang.org/x/crypto/ssh"
)

// revocations is what the revoked_keys files refuse: plain keys by blob or
// fingerprint, and certificates by CA and serial or key id (OpenSSH's KRL
// model, PROTOCOL.krl).
type revocations struct {
	keys   map[string]bool // marshalled plain public key
	sha1   map[[20]byte]bool
	sha256 map[[32]byte]bool
	// certs is keyed by the marshalled CA key; "" applies to any CA.
	certs map[string]*certRevocations
}

// certRevocations are the certificates of one CA that are revoked.
type certRevocations struct {
	ranges  [][2]uint64 // inclusive serial ranges
	bitmaps []serialBitmap
	keyIDs  map[string]bool
}

// serialBitmap revokes serial offset+i for every bit i set in bits.
type serialBitmap struct {
	offset uint64
	bits   *big.Int
}

func (c *certRevocations) serialRevoked(serial uint64) bool {
	for _, r := range c.ranges {
		if serial >= r[0] && serial <= r[1] {
			return true
		}
	}
	for _, b := range c.bitmaps {
		if serial >= b.offset && serial-b.offset < uint64(b.bits.BitLen()) && b.bits.Bit(int(serial-b.offset)) == 1 {
			return true
		}
	}
	return false
}

func (r *revocations) keyRevoked(k gossh.PublicKey) bool {
	blob := k.Marshal()
	return r.keys[string(blob)] || r.sha1[sha1.Sum(blob)] || r.sha256[sha256.Sum256(blob)]
}

// check says why key is revoked, or "" when it is not. A certificate is
// refused when its own key, its CA's key, its serial or its key id is
// revoked, as sshd does.
func (r *revocations) check(key gossh.PublicKey) string {
	if r == nil {
		return ""
	}
	cert, ok := key.(*gossh.Certificate)
	if !ok {
		if r.keyRevoked(key) {
			return "key " + gossh.FingerprintSHA256(key)
		}
		return ""
	}
	if r.keyRevoked(cert.Key) {
		return "key " + gossh.FingerprintSHA256(cert.Key)
	}
	if r.keyRevoked(cert.SignatureKey) {
		return "CA key " + gossh.FingerprintSHA256(cert.SignatureKey)
	}
	for _, ca := range []string{string(cert.SignatureKey.Marshal()), ""} {
		c := r.certs[ca]
		if c == nil {
			continue
		}
		if cert.Serial != 0 && c.serialRevoked(cert.Serial) {
			return fmt.Sprintf("certificate serial %d", cert.Serial)
		}
		if c.keyIDs[cert.KeyId] {
			return fmt.Sprintf("certificate key id %q", cert.KeyId)
		}
	}
	return ""
}

func newRevocations() *revocations {
	return &revocations{keys: map[string]bool{}, sha1: map[[20]byte]bool{}, sha256: map[[32]byte]bool{},
		certs: map[string]*certRevocations{}}
}

// readRevocations reads revoked_keys files: each is an OpenSSH KRL or a
// list of public keys in authorized_keys format. A listed file that is
// missing is an error, as an unreadable one is: revoking nothing because
// a file was deleted, renamed or not yet deployed would readmit every
// key it held.
func readRevocations(files []string) (*revocations, error) {
	r := newRevocations()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("listed but missing, so every new login is refused until it exists (an empty file revokes nothing): %w", err)
		}
		if err != nil {
			return nil, err // names the file: "open F: permission denied"
		}
		if bytes.HasPrefix(b, []byte(krlMagic)) {
			if err := r.parseKRL(b); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			continue
		}
		keys, err := parseKeyLines(f, b, true)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			if c, ok := k.(*gossh.Certificate); ok {
				k = c.Key
			}
			r.keys[string(k.Marshal())] = true
		}
	}
	return r, nil
}

// PROTOCOL.krl constants.
const (
	krlMagic               = "SSHKRL\n\x00"
	krlFormatVersion       = 1
	krlSectionCertificates = 1
	krlSectionExplicitKey  = 2
	krlSectionFingerprint1 = 3
	krlSectionSignature    = 4
	krlSectionFingerprint2 = 5
	krlCertSerialList      = 0x20
	krlCertSerialRange     = 0x21
	krlCertSerialBitmap    = 0x22
	krlCertKeyID           = 0x23
	krlMaxBitmapBits       = 1 << 24 // 2 MiB of bitmap; OpenSSH writes far smaller
)

var errKRLTruncated = errors.New("KRL: truncated")

// parseKRL adds an OpenSSH binary key revocation list (PROTOCOL.krl) to r.
// Signature sections are not verified: the file's integrity is the
// operator's, like any other config file.
func (r *revocations) parseKRL(b []byte) error {
	s := cryptobyte.String(b)
	var magic []byte
	var version uint32
	var krlVersion, date, flags uint64
	var reserved, comment cryptobyte.String
	if !s.ReadBytes(&magic, len(krlMagic)) || string(magic) != krlMagic {
		return errors.New("KRL: bad magic")
	}
	if !s.ReadUint32(&version) || !s.ReadUint64(&krlVersion) || !s.ReadUint64(&date) || !s.ReadUint64(&flags) ||
		!readString(&s, &reserved) || !readString(&s, &comment) {
		return errKRLTruncated
	}
	if version != krlFormatVersion {
		return fmt.Errorf("KRL: format version %d not supported", version)
	}
	for !s.Empty() {
		var typ uint8
		var data cryptobyte.String
		if !s.ReadUint8(&typ) || !readString(&s, &data) {
			return errKRLTruncated
		}
		switch typ {
		case krlSectionCertificates:
			if err := r.parseKRLCerts(data); err != nil {
				return err
			}
		case krlSectionExplicitKey:
			if err := r.parseKRLKeys(data); err != nil {
				return err
			}
		case krlSectionFingerprint1, krlSectionFingerprint2:
			if err := r.parseKRLFingerprints(typ, data); err != nil {
				return err
			}
		case krlSectionSignature:
			// Signatures come last; what follows is signatures only.
			return nil
		default:
			return fmt.Errorf("KRL: unknown section type %d", typ)
		}
	}
	return nil
}

// parseKRLKeys reads a KRL section of revoked keys, each whole.
func (r *revocations) parseKRLKeys(data cryptobyte.String) error {
	for !data.Empty() {
		var blob cryptobyte.String
		if !readString(&data, &blob) {
			return errKRLTruncated
		}
		k, err := gossh.ParsePublicKey(blob)
		if err != nil {
			return fmt.Errorf("KRL: explicit key: %w", err)
		}
		r.keys[string(k.Marshal())] = true
	}
	return nil
}

// parseKRLFingerprints reads a KRL section of revoked key hashes: SHA-1
// or SHA-256 by the section's type.
func (r *revocations) parseKRLFingerprints(typ uint8, data cryptobyte.String) error {
	for !data.Empty() {
		var h cryptobyte.String
		if !readString(&data, &h) {
			return errKRLTruncated
		}
		switch {
		case typ == krlSectionFingerprint1 && len(h) == sha1.Size:
			r.sha1[[20]byte(h)] = true
		case typ == krlSectionFingerprint2 && len(h) == sha256.Size:
			r.sha256[[32]byte(h)] = true
		default:
			return fmt.Errorf("KRL: fingerprint of %d bytes in section %d", len(h), typ)
		}
	}
	return nil
}

// parseKRLCerts reads a KRL certificates section: the CA it is for, then
// its subsections (serials, serial ranges and bitmaps, key IDs).
func (r *revocations) parseKRLCerts(data cryptobyte.String) error {
	var caBlob, reserved cryptobyte.String
	if !readString(&data, &caBlob) || !readString(&data, &reserved) {
		return errKRLTruncated
	}
	ca := ""
	if len(caBlob) > 0 {
		k, err := gossh.ParsePublicKey(caBlob)
		if err != nil {
			return fmt.Errorf("KRL: CA key: %w", err)
		}
		ca = string(k.Marshal())
	}
	c := r.certs[ca]
	if c == nil {
		c = &certRevocations{keyIDs: map[string]bool{}}
		r.certs[ca] = c
	}
	for !data.Empty() {
		var typ uint8
		var sub cryptobyte.String
		if !data.ReadUint8(&typ) || !readString(&data, &sub) {
			return errKRLTruncated
		}
		if err := c.parseSection(typ, sub); err != nil {
			return err
		}
	}
	return nil
}

// parseSection reads one section of a KRL certificates section into c.
func (c *certRevocations) parseSection(typ uint8, sub cryptobyte.String) error {
	switch typ {
	case krlCertSerialList:
		for !sub.Empty() {
			var serial uint64
			if !sub.ReadUint64(&serial) {
				return errKRLTruncated
			}
			c.ranges = append(c.ranges, [2]uint64{serial, serial})
		}
	case krlCertSerialRange:
		var lo, hi uint64
		if !sub.ReadUint64(&lo) || !sub.ReadUint64(&hi) || !sub.Empty() {
			return errors.New("KRL: malformed serial range")
		}
		if lo > hi {
			return fmt.Errorf("KRL: serial range %d-%d is backwards", lo, hi)
		}
		c.ranges = append(c.ranges, [2]uint64{lo, hi})
	case krlCertSerialBitmap:
		var offset uint64
		var mp cryptobyte.String
		if !sub.ReadUint64(&offset) || !readString(&sub, &mp) || !sub.Empty() {
			return errors.New("KRL: malformed serial bitmap")
		}
		if len(mp) > 0 && mp[0]&0x80 != 0 {
			return errors.New("KRL: negative serial bitmap")
		}
		if len(mp)*8 > krlMaxBitmapBits {
			return fmt.Errorf("KRL: serial bitmap of %d bytes is too large", len(mp))
		}
		c.bitmaps = append(c.bitmaps, serialBitmap{offset: offset, bits: new(big.Int).SetBytes(mp)})
	case krlCertKeyID:
		for !sub.Empty() {
			var id cryptobyte.String
			if !readString(&sub, &id) {
				return errKRLTruncated
			}
			c.keyIDs[string(id)] = true
		}
	default:
		return fmt.Errorf("KRL: unknown certificate section type %#x", typ)
	}
	return nil
}

// readString reads an SSH string (uint32 length, then bytes) from s.
func readString(s *cryptobyte.String, out *cryptobyte.String) bool {
	var n uint32
	var b []byte
	if !s.ReadUint32(&n) || uint64(n) > uint64(len(*s)) || !s.ReadBytes(&b, int(n)) {
		return false
	}
	*out = b
	return true
}
