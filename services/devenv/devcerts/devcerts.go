// Package devcerts makes a development certificate authority and the
// certificates signed by it: a server certificate for NATS or ClickHouse on
// this machine (or under compose service names) and client certificates for
// mutual TLS. Keys are ECDSA P-256. It is for tests, `make run`, compose's
// one-shot cert service and k8s demos — never a production PKI: the CA's
// private key sits in the same directory as the certificates it signs.
package devcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names inside a bundle's directory. Compose and k8s mount them under
// these names, so they are part of the deployment contract.
const (
	CAFile         = "ca.pem"
	CAKeyFile      = "ca-key.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
)

// DefaultHosts are the names a dev server certificate is valid for: this
// machine in every spelling a client may use.
var DefaultHosts = []string{"127.0.0.1", "::1", "localhost"}

// validity of dev certificates: long enough for a dev stack that keeps
// running, short enough that a leaked one does not live for years.
const validity = 90 * 24 * time.Hour

// Bundle is a CA and one server certificate in a directory.
type Bundle struct {
	// Dir holds the files.
	Dir string
	// CA is the PEM CA certificate clients trust (AIGOV_NATS_TLS_CA).
	CA string
	// ServerCert and ServerKey are the server's PEM certificate and key.
	ServerCert, ServerKey string

	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
}

// Ensure returns the bundle in dir, creating what is missing: a CA (reused
// when dir already has one, so that clients holding the CA keep working
// across restarts) and a server certificate for hosts (IP addresses or DNS
// names; DefaultHosts when empty), rewritten on every call so that a host
// list change takes effect.
func Ensure(dir string, hosts ...string) (*Bundle, error) {
	if len(hosts) == 0 {
		hosts = DefaultHosts
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devcerts: %w", err)
	}
	b := &Bundle{
		Dir: dir, CA: filepath.Join(dir, CAFile),
		ServerCert: filepath.Join(dir, ServerCertFile), ServerKey: filepath.Join(dir, ServerKeyFile),
	}
	var err error
	if b.caCert, b.caKey, err = loadCA(b.CA, filepath.Join(dir, CAKeyFile)); errors.Is(err, os.ErrNotExist) {
		b.caCert, b.caKey, err = b.newCA()
	}
	if err != nil {
		return nil, err
	}
	tmpl, err := template(hosts[0], x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	if err := b.issue(tmpl, b.ServerCert, b.ServerKey); err != nil {
		return nil, err
	}
	return b, nil
}

// ClientCert issues a client certificate for name (a NATS role) into the
// bundle's directory and returns its certificate and key files. The name
// is the certificate's common name and its one DNS SAN: nats-server's
// verify_and_map takes the user from the SAN, so the certificate alone is
// the role's identity.
func (b *Bundle) ClientCert(name string) (certFile, keyFile string, err error) {
	tmpl, err := template(name, x509.ExtKeyUsageClientAuth)
	if err != nil {
		return "", "", err
	}
	tmpl.DNSNames = []string{name}
	certFile = filepath.Join(b.Dir, "client-"+name+".pem")
	keyFile = filepath.Join(b.Dir, "client-"+name+"-key.pem")
	if err := b.issue(tmpl, certFile, keyFile); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// ServerTLS is a tls.Config serving the bundle's server certificate.
func (b *Bundle) ServerTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(b.ServerCert, b.ServerKey)
	if err != nil {
		return nil, fmt.Errorf("devcerts: server key pair: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// ShareKeys makes every file in the bundle's directory readable by other
// users: compose runs NATS and ClickHouse under their own uids and mounts
// one volume. Only for dev bundles, whose keys guard nothing of value.
func (b *Bundle) ShareKeys() error {
	ents, err := os.ReadDir(b.Dir)
	if err != nil {
		return fmt.Errorf("devcerts: %w", err)
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			if err := os.Chmod(filepath.Join(b.Dir, e.Name()), 0o644); err != nil {
				return fmt.Errorf("devcerts: %w", err)
			}
		}
	}
	return os.Chmod(b.Dir, 0o755)
}

// Pool is a cert pool holding only the bundle's CA.
func (b *Bundle) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(b.caCert)
	return p
}

func template(cn string, usage x509.ExtKeyUsage) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("devcerts: serial: %w", err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"aigov dev"}},
		// Backdated a little so a client whose clock lags still accepts it.
		NotBefore:   now.Add(-time.Hour),
		NotAfter:    now.Add(validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}, nil
}

func (b *Bundle) newCA() (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: CA key: %w", err)
	}
	tmpl, err := template("aigov dev CA", x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, nil, err
	}
	tmpl.ExtKeyUsage = nil
	tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.MaxPathLenZero = true, true, true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: CA certificate: %w", err)
	}
	if err := writePEM(b.CA, "CERTIFICATE", der, 0o644); err != nil {
		return nil, nil, err
	}
	if err := writeKey(filepath.Join(b.Dir, CAKeyFile), key); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

func (b *Bundle) issue(tmpl *x509.Certificate, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("devcerts: key: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.caCert, &key.PublicKey, b.caKey)
	if err != nil {
		return fmt.Errorf("devcerts: certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	// The key first: a certificate without its key is useless, the other
	// way round a rerun fixes it.
	if err := writeKey(keyFile, key); err != nil {
		return err
	}
	return writePEM(certFile, "CERTIFICATE", der, 0o644)
}

func loadCA(certFile, keyFile string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: read CA: %w", err)
	}
	kb, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: read CA key: %w", err)
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, nil, fmt.Errorf("devcerts: %s or %s is not PEM", certFile, keyFile)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: parse CA: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("devcerts: parse CA key: %w", err)
	}
	return cert, key, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("devcerts: marshal key: %w", err)
	}
	return writePEM(path, "EC PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	// Write then rename, so a reader never sees half a file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		return fmt.Errorf("devcerts: write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return fmt.Errorf("devcerts: chmod %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("devcerts: write %s: %w", path, err)
	}
	return nil
}
