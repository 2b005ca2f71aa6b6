package chain

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// TestHashIsTheDocumentedEncoding: Row.Hash is SHA-256 of the encoding the
// package comment documents, written field by field, so rows hashed before
// Hash was optimised still verify.
func TestHashIsTheDocumentedEncoding(t *testing.T) {
	t.Parallel()
	rows := []Row{
		{},
		{Stream: "AIGOV_DECISIONS", Seq: 7, PrevSeq: 6, EventID: "e", Type: "dev.aigov.decision.v1", Source: "aigov/policy",
			Subject: "aigov.decision.model.retrain", TimeUS: 1764064800123456, Data: `{"a":1}`},
		{Stream: "S", Seq: 9, PrevSeq: 3, EventID: "gap:S:9", Type: TypeGap, InvalidReason: "gone", Data: strings.Repeat("x", 5000)},
	}
	for _, r := range rows {
		h := sha256.New()
		field(h, "aigov-row-v1")
		field(h, r.Stream)
		u64(h, r.Seq)
		u64(h, r.PrevSeq)
		field(h, r.EventID)
		field(h, r.Type)
		field(h, r.Source)
		field(h, r.Subject)
		u64(h, r.TimeUS)
		field(h, r.Data)
		field(h, r.InvalidReason)
		if want := hex.EncodeToString(h.Sum(nil)); r.Hash() != want {
			t.Errorf("Hash(%+v) = %s, want %s", r, r.Hash(), want)
		}
	}
}

// TestExtendHashed: a row hashed beforehand links exactly as Extend links
// it, and a stale precomputed hash (wrong PrevSeq) is not trusted.
func TestExtendHashed(t *testing.T) {
	t.Parallel()
	head := NewHead("S", 4)
	a := Row{Stream: "S", Seq: 5, EventID: "a", Data: "x"}
	b := a
	b.PrevSeq = head.Seq
	b.RowHash = b.Hash()
	if ha, hb := head.Extend(&a), head.ExtendHashed(&b); ha != hb || a != b {
		t.Fatalf("ExtendHashed = %+v %+v, Extend = %+v %+v", hb, b, ha, a)
	}
	c := Row{Stream: "S", Seq: 5, EventID: "a", Data: "x", PrevSeq: 2, RowHash: "stale"}
	if hc := head.ExtendHashed(&c); c != a || hc.Hash != a.ChainHash {
		t.Fatalf("stale row hash trusted: %+v", c)
	}
}
