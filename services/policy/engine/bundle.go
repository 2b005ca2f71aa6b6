package engine

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cedar-policy/cedar-go"
)

// Bundle is a policy set as stored in JetStream: its files, and the hash
// the pusher computed (checked against the files on load).
type Bundle struct {
	Version string `json:"version"`
	Files   []File `json:"files"`
}

// EncodeBundle serialises files as a Bundle.
func EncodeBundle(files []File) ([]byte, string, error) {
	v := Version(files)
	b, err := json.Marshal(Bundle{Version: v, Files: files})
	if err != nil {
		return nil, "", fmt.Errorf("encode policy bundle: %w", err)
	}
	return b, v, nil
}

// CompileBundle decodes and compiles a stored Bundle. The set must carry a
// schema and its files must hash to the version the bundle claims.
func CompileBundle(b []byte) (*Set, error) {
	var bu Bundle
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&bu); err != nil {
		return nil, fmt.Errorf("decode policy bundle: %w", err)
	}
	if v := Version(bu.Files); v != bu.Version {
		return nil, fmt.Errorf("policy bundle claims version %s but its files hash to %s", bu.Version, v)
	}
	set, err := Compile(bu.Files)
	if err != nil {
		return nil, err
	}
	if !set.Validated() {
		return nil, fmt.Errorf("policy set %s has no *%s file: every active set is validated against a schema", set.Version(), SchemaSuffix)
	}
	return set, nil
}

// EntityKey is the entities bucket key of uid: the type, a dot, and the
// id in unpadded base64url (KV keys allow only a few characters).
func EntityKey(uid cedar.EntityUID) string {
	return string(uid.Type) + "." + base64.RawURLEncoding.EncodeToString([]byte(uid.ID))
}

// ParseEntityKey is the inverse of EntityKey: the entity a store key names.
func ParseEntityKey(key string) (cedar.EntityUID, bool) {
	i := strings.LastIndexByte(key, '.')
	if i <= 0 {
		return cedar.EntityUID{}, false
	}
	id, err := base64.RawURLEncoding.DecodeString(key[i+1:])
	if err != nil {
		return cedar.EntityUID{}, false
	}
	return cedar.NewEntityUID(cedar.EntityType(key[:i]), cedar.String(id)), true
}

// HexOf strips the "sha256:" prefix of a version or digest.
func HexOf(v string) string { return strings.TrimPrefix(v, "sha256:") }
