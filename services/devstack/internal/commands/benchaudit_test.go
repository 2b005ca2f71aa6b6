package commands

import (
	"testing"
	"time"
)

// TestRowPollerLags: row k is visible at the first sample counting more
// than k rows; rows never seen are left out.
func TestRowPollerLags(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_800_000_000, 0)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	p := &rowPoller{samples: []rowSample{{ms(100), 0}, {ms(120), 2}, {ms(140), 2}, {ms(160), 3}}}
	got := p.lags([]time.Time{ms(0), ms(10), ms(20), ms(30)})
	want := []time.Duration{110 * time.Millisecond, 120 * time.Millisecond, 140 * time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("lags = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("lags = %v, want %v", got, want)
		}
	}
}
