package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
)

// signingRoles are the roles whose services sign events.
var signingRoles = []string{schemas.RoleAuthn, schemas.RolePolicy, schemas.RoleReaper}

const keysUsage = `usage:
  aigov keys gen    --dir DIR [--roles authn,policy,reaper]   a key per role (kept if present) and DIR/trust.json
  aigov keys add    --trust-file FILE --role ROLE --key KEYFILE   trust one more key of ROLE (rotation: both valid)
  aigov keys remove --trust-file FILE --key-id ID             stop trusting a retired key
  aigov keys list   --trust-file FILE                         the trusted keys: role, key id, comment
`

// keysCmd is `aigov keys`: the event signing keys and the trust file that
// every verifier (policy, the audit, the SDK and this CLI) reads.
func keysCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, keysUsage)
		return ExitUsage
	}
	fs := flag.NewFlagSet("aigov keys "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		dir     = fs.String("dir", "keys", "directory of the keys (gen)")
		roles   = fs.String("roles", strings.Join(signingRoles, ","), "roles to make keys for (gen)")
		trust   = fs.String("trust-file", "", "the trust file (add, remove, list)")
		role    = fs.String("role", "", "role of the key (add)")
		keyFile = fs.String("key", "", "PEM key file, private or public (add)")
		keyID   = fs.String("key-id", "", "id of the key to stop trusting (remove)")
		comment = fs.String("comment", "", "free text stored with the key (add)")
	)
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "aigov keys %s: %v\n", args[0], err)
		return ExitError
	}
	needTrust := func() bool {
		if *trust == "" {
			fmt.Fprintf(stderr, "aigov keys %s: --trust-file is required\n", args[0])
			return false
		}
		return true
	}
	switch args[0] {
	case "gen":
		var rs []string
		for _, r := range strings.Split(*roles, ",") {
			if r = strings.TrimSpace(r); r != "" {
				rs = append(rs, r)
			}
		}
		if len(rs) == 0 {
			fmt.Fprintln(stderr, "aigov keys gen: --roles names no role")
			return ExitUsage
		}
		path, err := signing.WriteKeySet(*dir, rs...)
		if err != nil {
			return fail(err)
		}
		for _, r := range rs {
			fmt.Fprintf(stdout, "%s key %s\n", r, filepath.Join(*dir, signing.KeyFileName(r)))
		}
		fmt.Fprintf(stdout, "trust file %s\n", path)
		return ExitAllow
	case "add":
		if !needTrust() || *role == "" || *keyFile == "" {
			fmt.Fprintln(stderr, "aigov keys add: --trust-file, --role and --key are required")
			return ExitUsage
		}
		pub, err := signing.LoadPublicKey(*keyFile)
		if err != nil {
			return fail(err)
		}
		f, err := readTrustFile(*trust)
		if err != nil {
			return fail(err)
		}
		id := signing.KeyID(pub)
		for _, k := range f.Keys {
			if trustedKeyID(k) == id {
				return fail(fmt.Errorf("key %s is trusted already (role %s)", id, k.Role))
			}
		}
		f.Keys = append(f.Keys, signing.Entry(*role, pub, *comment))
		if err := writeTrustFile(*trust, f); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "trusting key %s for %s (%d keys)\n", id, *role, len(f.Keys))
		return ExitAllow
	case "remove":
		if !needTrust() || *keyID == "" {
			fmt.Fprintln(stderr, "aigov keys remove: --trust-file and --key-id are required")
			return ExitUsage
		}
		f, err := readTrustFile(*trust)
		if err != nil {
			return fail(err)
		}
		kept := f.Keys[:0]
		for _, k := range f.Keys {
			if trustedKeyID(k) != *keyID {
				kept = append(kept, k)
			}
		}
		if len(kept) == len(f.Keys) {
			return fail(fmt.Errorf("no key %s in %s", *keyID, *trust))
		}
		if len(kept) == 0 {
			return fail(errors.New("that is the last key: a trust file without keys verifies nothing"))
		}
		f.Keys = kept
		if err := writeTrustFile(*trust, f); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "key %s no longer trusted (%d keys left)\n", *keyID, len(kept))
		return ExitAllow
	case "list":
		if !needTrust() {
			return ExitUsage
		}
		t, err := signing.LoadTrust(*trust)
		if err != nil {
			return fail(err)
		}
		f, err := readTrustFile(*trust)
		if err != nil {
			return fail(err)
		}
		comments := map[string]string{}
		for _, k := range f.Keys {
			comments[trustedKeyID(k)] = k.Comment
		}
		for _, k := range t.Keys() {
			fmt.Fprintf(stdout, "%-8s %s  %s\n", k.Role, k.ID, comments[k.ID])
		}
		return ExitAllow
	default:
		fmt.Fprintf(stderr, "aigov keys: unknown subcommand %q\n\n%s", args[0], keysUsage)
		return ExitUsage
	}
}

// readTrustFile reads a trust file, checking it parses as a trust set.
func readTrustFile(path string) (signing.TrustFile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return signing.TrustFile{}, err
	}
	if _, err := signing.ParseTrust(b); err != nil {
		return signing.TrustFile{}, err
	}
	var f signing.TrustFile
	if err := json.Unmarshal(b, &f); err != nil {
		return signing.TrustFile{}, err
	}
	return f, nil
}

func writeTrustFile(path string, f signing.TrustFile) error {
	return signing.WriteTrust(path, f.Keys...)
}

// trustedKeyID is the id of an entry's key ("" when it does not decode).
func trustedKeyID(e signing.TrustedKey) string {
	k, err := e.Key()
	if err != nil {
		return ""
	}
	return k.ID
}
