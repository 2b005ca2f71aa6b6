package cli

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/aigov/aigov/services/devenv/devcerts"
)

// devCertsCmd is `aigov dev-certs`: a dev CA and a server certificate for
// the given host names in one directory, for compose's one-shot cert
// service and k8s demos. It reuses the CA already in the directory, so a
// rerun keeps every client's trust. Not a production PKI.
func devCertsCmd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("aigov dev-certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		dir     = fs.String("dir", "certs", "directory for "+devcerts.CAFile+", "+devcerts.ServerCertFile+" and "+devcerts.ServerKeyFile)
		hosts   = fs.String("hosts", strings.Join(devcerts.DefaultHosts, ","), "comma-separated DNS names and IP addresses the server certificate is valid for")
		clients = fs.String("clients", "", "comma-separated NATS roles to issue client certificates for (mutual TLS)")
		share   = fs.Bool("share", false, "make every file readable by other users (a volume shared by containers running as other uids)")
	)
	if err := parseArgs(fs, args); err != nil {
		return ExitUsage
	}
	var names []string
	for _, h := range strings.Split(*hosts, ",") {
		if h = strings.TrimSpace(h); h != "" {
			names = append(names, h)
		}
	}
	b, err := devcerts.Ensure(*dir, names...)
	if err != nil {
		fmt.Fprintf(stderr, "aigov dev-certs: %v\n", err)
		return ExitError
	}
	for _, role := range strings.Split(*clients, ",") {
		if role = strings.TrimSpace(role); role == "" {
			continue
		}
		if _, _, err := b.ClientCert(role); err != nil {
			fmt.Fprintf(stderr, "aigov dev-certs: %v\n", err)
			return ExitError
		}
	}
	if *share {
		if err := b.ShareKeys(); err != nil {
			fmt.Fprintf(stderr, "aigov dev-certs: %v\n", err)
			return ExitError
		}
	}
	fmt.Fprintf(stdout, "CA %s, server certificate %s for %s\n", b.CA, b.ServerCert, strings.Join(names, ","))
	return ExitAllow
}
