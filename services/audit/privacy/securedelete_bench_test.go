package privacy_test

import (
	"context"
	"testing"

	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// BenchmarkSecureDeleteRequest is what authn would pay per request to
// overwrite each request in the request stream after sealing it, instead
// of the work queue's ack (docs/privacy.md weighs it): one secure delete
// round trip on a message of ~1 KiB, on an embedded server.
func BenchmarkSecureDeleteRequest(b *testing.B) {
	ctx := context.Background()
	ns := natsdev.StartT(b, natsdev.Options{Dir: b.TempDir()})
	_, js := ns.ConnectT(b, natsdev.AdminUser)
	topo := topology.New("aigov")
	st, err := js.Stream(ctx, topo.StreamRequests())
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 1024)
	seqs := make([]uint64, b.N)
	for i := range b.N {
		ack, err := js.Publish(ctx, topo.Subjects.Request("model.retrain"), body)
		if err != nil {
			b.Fatal(err)
		}
		seqs[i] = ack.Sequence
	}
	b.ResetTimer()
	for i := range b.N {
		if err := st.SecureDeleteMsg(ctx, seqs[i]); err != nil {
			b.Fatal(err)
		}
	}
}
