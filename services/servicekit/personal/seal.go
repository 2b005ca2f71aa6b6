package personal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/aigov/aigov/schemas"
)

// Field names bound into a sealed value's additional data: a value sealed
// as one field cannot be passed off as another.
const (
	FieldEmail = "principal.email"
	FieldName  = "principal.name"
	// FieldContextPrefix precedes a context key: "context.ssn".
	FieldContextPrefix = "context."
)

// Redacted replaces a personal context field of an event that has no
// verified subject to seal it for (an authn deny before the token checked
// out): there is no key to erase later, so the value is not kept at all.
const Redacted = "***"

// ErrWrongSubject is returned for a sealed value whose key id is not its
// principal's: it was not sealed for this subject (a requester cannot seal
// anything, see ReservedField).
var ErrWrongSubject = errors.New("sealed value names another subject's key")

// Sealer encrypts the personal fields of an event under its subject's key:
// the principal's email and name, and the context fields configured as
// personal (AIGOV_PERSONAL_CONTEXT_FIELDS, top-level keys, matched ignoring
// case).
type Sealer struct {
	keys   *Cache
	fields map[string]bool
}

// NewSealer seals with keys; contextFields names the personal context
// fields.
func NewSealer(keys *Cache, contextFields []string) *Sealer {
	s := &Sealer{keys: keys, fields: map[string]bool{}}
	for _, f := range contextFields {
		if f = strings.ToLower(strings.TrimSpace(f)); f != "" {
			s.fields[f] = true
		}
	}
	return s
}

// Keys is the sealer's key cache.
func (s *Sealer) Keys() *Cache { return s.keys }

// Personal reports whether context field k is configured as personal.
func (s *Sealer) Personal(k string) bool { return len(s.fields) > 0 && s.fields[strings.ToLower(k)] }

// Seal encrypts p's email and name in place, and returns c with its
// personal fields encrypted (a copy when any is; c itself is never
// changed), all under the key of p's subject, created on first use.
func (s *Sealer) Seal(ctx context.Context, p *schemas.Principal, c map[string]any) (map[string]any, error) {
	if p.Email == "" && p.Name == "" && !s.anyPersonal(c) {
		return c, nil
	}
	key, err := s.keys.KeyFor(ctx, p.Issuer, p.Subject)
	if err != nil {
		return nil, fmt.Errorf("subject key of %s: %w", p.ID, err)
	}
	if p.Email != "" {
		if p.Email, err = key.Seal(FieldEmail, p.Email); err != nil {
			return nil, err
		}
	}
	if p.Name != "" {
		if p.Name, err = key.Seal(FieldName, p.Name); err != nil {
			return nil, err
		}
	}
	if !s.anyPersonal(c) {
		return c, nil
	}
	out := make(map[string]any, len(c))
	for k, v := range c {
		if !s.Personal(k) {
			out[k] = v
			continue
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("seal context.%s: %w", k, err)
		}
		if out[k], err = key.Seal(FieldContextPrefix+k, string(b)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Redact returns c with its personal fields replaced by Redacted (a copy
// when any is).
func (s *Sealer) Redact(c map[string]any) map[string]any {
	if !s.anyPersonal(c) {
		return c
	}
	out := make(map[string]any, len(c))
	for k, v := range c {
		if s.Personal(k) {
			v = Redacted
		}
		out[k] = v
	}
	return out
}

func (s *Sealer) anyPersonal(c map[string]any) bool {
	if len(s.fields) == 0 {
		return false
	}
	for k := range c {
		if s.Personal(k) {
			return true
		}
	}
	return false
}

// ReservedField returns a top-level context field whose value is a string
// starting with CipherPrefix. Such values are aigov's own: authn denies a
// request that sends one, so whatever policy opens was sealed by authn.
func ReservedField(c map[string]any) (string, bool) {
	for k, v := range c {
		if s, ok := v.(string); ok && strings.HasPrefix(s, CipherPrefix) {
			return k, true
		}
	}
	return "", false
}

// ErrUnreadable wraps a sealed value that does not open under its
// subject's key (tampered, or sealed under a key since erased and created
// again).
var ErrUnreadable = errors.New("sealed value does not open")

// KeyGetter reads subject keys by id (a Cache).
type KeyGetter interface {
	Get(ctx context.Context, keyID string) (*Key, error)
}

// Sealed reports whether p or c hold a sealed value.
func Sealed(p schemas.Principal, c map[string]any) bool {
	if strings.HasPrefix(p.Email, CipherPrefix) || strings.HasPrefix(p.Name, CipherPrefix) {
		return true
	}
	_, ok := ReservedField(c)
	return ok
}

// Open decrypts p's email and name in place and returns c with every
// sealed value opened (a copy when any is), each of them checked to be
// sealed for p's subject. An erased subject's values fail with ErrErased.
// Numbers in opened context values are json.Number, as policy decodes a
// context.
func Open(ctx context.Context, keys KeyGetter, p *schemas.Principal, c map[string]any) (map[string]any, error) {
	if !Sealed(*p, c) {
		return c, nil
	}
	keyID := SubjectKeyID(p.Issuer, p.Subject)
	key, err := keys.Get(ctx, keyID)
	if err != nil {
		return nil, err
	}
	open := func(field, v string) (string, error) {
		if !strings.HasPrefix(v, CipherPrefix) {
			return v, nil
		}
		if id, _ := CipherKeyID(v); id != keyID {
			return "", fmt.Errorf("%s: %w", field, ErrWrongSubject)
		}
		plain, err := key.Open(field, v)
		if err != nil {
			return "", fmt.Errorf("%s: %w: %v", field, ErrUnreadable, err)
		}
		return plain, nil
	}
	if p.Email, err = open(FieldEmail, p.Email); err != nil {
		return nil, err
	}
	if p.Name, err = open(FieldName, p.Name); err != nil {
		return nil, err
	}
	if _, ok := ReservedField(c); !ok {
		return c, nil
	}
	out := make(map[string]any, len(c))
	for k, v := range c {
		out[k] = v
		s, ok := v.(string)
		if !ok || !strings.HasPrefix(s, CipherPrefix) {
			continue
		}
		plain, err := open(FieldContextPrefix+k, s)
		if err != nil {
			return nil, err
		}
		dec := json.NewDecoder(bytes.NewReader([]byte(plain)))
		dec.UseNumber()
		var val any
		if err := dec.Decode(&val); err != nil {
			return nil, fmt.Errorf("open context.%s: %w", k, err)
		}
		out[k] = val
	}
	return out, nil
}
