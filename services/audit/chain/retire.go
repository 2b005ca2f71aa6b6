package chain

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"strconv"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/aigov/aigov/schemas/signing"
)

// Retirement is a signed statement that positions From..To of Stream were
// dropped by the retention policy, and that the chain stood at ChainHash
// at To. Verify accepts a missing range only when a retirement names it
// exactly, and checks the rows after it against ChainHash.
type Retirement struct {
	Stream    string
	From, To  uint64
	ChainHash string
	// Partition is the YYYYMM partition the rows were in.
	Partition uint32
	Reason    string
	At        time.Time
	KeyID     string
	Signature string
}

// Payload is the exact byte string a retirement's signature covers.
func (r Retirement) Payload() []byte {
	return []byte("aigov-retirement-v1\n" + r.Stream + "\n" + strconv.FormatUint(r.From, 10) + "\n" +
		strconv.FormatUint(r.To, 10) + "\n" + r.ChainHash + "\n" + strconv.FormatUint(uint64(r.Partition), 10) + "\n" +
		r.Reason + "\n" + r.At.UTC().Format(time.RFC3339Nano) + "\n")
}

// SignRetirement signs r with key.
func SignRetirement(r Retirement, key ed25519.PrivateKey) Retirement {
	r.At = r.At.UTC()
	r.KeyID = signing.KeyID(key.Public().(ed25519.PublicKey))
	r.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, r.Payload()))
	return r
}

// Verify checks r's signature with pub.
func (r Retirement) Verify(pub ed25519.PublicKey) error {
	sig, err := base64.StdEncoding.DecodeString(r.Signature)
	if err != nil || !ed25519.Verify(pub, r.Payload(), sig) {
		return fmt.Errorf("%w: retirement of stream %s seq %d..%d (key %s)", ErrBadSignature, r.Stream, r.From, r.To, r.KeyID)
	}
	return nil
}

// RetirementColumns is the column list of table retirements, in the order
// of Retirement's fields.
const RetirementColumns = "stream, from_seq, to_seq, chain_hash, partition_id, reason, retired_at, key_id, signature"

// Values are r's values in RetirementColumns order.
func (r Retirement) Values() []any {
	return []any{r.Stream, r.From, r.To, r.ChainHash, r.Partition, r.Reason, r.At.UTC().Format(time.RFC3339Nano), r.KeyID, r.Signature}
}

// ReadRetirements returns the retirements of stream in database db,
// ordered by From.
func ReadRetirements(ctx context.Context, conn driver.Conn, db, stream string) ([]Retirement, error) {
	if !identPattern.MatchString(db) {
		return nil, fmt.Errorf("database name %q is not a plain identifier", db)
	}
	rows, err := conn.Query(ctx, "SELECT "+RetirementColumns+" FROM "+db+".retirements FINAL WHERE stream = ? ORDER BY from_seq, to_seq", stream)
	if err != nil {
		return nil, fmt.Errorf("read %s.retirements: %w", db, err)
	}
	defer rows.Close()
	var out []Retirement
	for rows.Next() {
		var r Retirement
		var at string
		if err := rows.Scan(&r.Stream, &r.From, &r.To, &r.ChainHash, &r.Partition, &r.Reason, &at, &r.KeyID, &r.Signature); err != nil {
			return nil, fmt.Errorf("scan %s.retirements: %w", db, err)
		}
		if r.At, err = time.Parse(time.RFC3339Nano, at); err != nil {
			return nil, fmt.Errorf("retirement of %s seq %d: time %q: %w", stream, r.From, at, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s.retirements: %w", db, err)
	}
	return out, nil
}

// Span is a range of stream positions.
type Span struct {
	From uint64 `json:"from_seq"`
	To   uint64 `json:"to_seq"`
}
