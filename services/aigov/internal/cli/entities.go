package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/cedar-policy/cedar-go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit/topology"
)

const entitiesUsage = `usage: aigov entities <put|get|list|delete> [flags] [args]

  put <file|->        store the entities of a Cedar entity JSON file (an array, or one entity)
  get <Type:id>       print one stored entity
  list [Type]         list stored entities, optionally of one type
  delete <Type:id>    remove one entity; requests naming it are then denied unknown_resource
`

// entitiesCmd is `aigov entities put|get|list|delete` on the trusted entity
// store (KV aigov_entities), as the operator NATS user. Every replica of the
// policy service watches the bucket and audits each change.
func entitiesCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, entitiesUsage)
		return ExitUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("aigov entities "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOperatorFlags(fs, lookup)
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "aigov entities %s: %v\n", sub, err)
		return code
	}
	var run func(context.Context, jetstream.KeyValue) error
	switch sub {
	case "put":
		if fs.NArg() != 1 {
			return fail(ExitUsage, errors.New("name one entity JSON file, or - for stdin"))
		}
		ents, err := readEntities(fs.Arg(0))
		if err != nil {
			return fail(ExitUsage, err)
		}
		run = func(ctx context.Context, kv jetstream.KeyValue) error {
			for _, e := range ents {
				b, err := json.Marshal(e)
				if err != nil {
					return err
				}
				rev, err := kv.Put(ctx, engine.EntityKey(e.UID), b)
				if err != nil {
					return fmt.Errorf("put %s: %w", e.UID, err)
				}
				fmt.Fprintf(stdout, "put %s (revision %d)\n", e.UID, rev)
			}
			return nil
		}
	case "get", "delete":
		if fs.NArg() != 1 {
			return fail(ExitUsage, errors.New("name one entity as Type:id"))
		}
		uid, err := parseUID(fs.Arg(0))
		if err != nil {
			return fail(ExitUsage, err)
		}
		run = func(ctx context.Context, kv jetstream.KeyValue) error {
			key := engine.EntityKey(uid)
			if sub == "delete" {
				if _, err := kv.Get(ctx, key); err != nil {
					return fmt.Errorf("%s: %w", uid, err)
				}
				if err := kv.Delete(ctx, key); err != nil {
					return fmt.Errorf("delete %s: %w", uid, err)
				}
				fmt.Fprintf(stdout, "deleted %s\n", uid)
				return nil
			}
			e, err := kv.Get(ctx, key)
			if err != nil {
				return fmt.Errorf("%s: %w", uid, err)
			}
			fmt.Fprintln(stdout, string(e.Value()))
			return nil
		}
	case "list":
		if fs.NArg() > 1 {
			return fail(ExitUsage, errors.New("at most one type"))
		}
		typ := fs.Arg(0)
		run = func(ctx context.Context, kv jetstream.KeyValue) error {
			lister, err := kv.ListKeys(ctx)
			if err != nil {
				return fmt.Errorf("list: %w", err)
			}
			var keys []string
			for k := range lister.Keys() {
				if typ == "" || strings.HasPrefix(k, typ+".") {
					keys = append(keys, k)
				}
			}
			slices.Sort(keys)
			for _, k := range keys {
				e, err := kv.Get(ctx, k)
				if errors.Is(err, jetstream.ErrKeyNotFound) {
					continue // deleted meanwhile
				}
				if err != nil {
					return fmt.Errorf("get %s: %w", k, err)
				}
				fmt.Fprintln(stdout, string(e.Value()))
			}
			return nil
		}
	default:
		fmt.Fprintf(stderr, "aigov entities: unknown subcommand %q\n\n%s", sub, entitiesUsage)
		return ExitUsage
	}
	cctx, cancel := context.WithTimeout(ctx, *of.timeout)
	defer cancel()
	nc, kv, err := of.bucket(cctx, topology.Topology.BucketEntities)
	if err != nil {
		return fail(ExitError, err)
	}
	defer nc.Close()
	if err := run(cctx, kv); err != nil {
		return fail(ExitError, err)
	}
	return ExitAllow
}

// readEntities reads Cedar entity JSON: an array of entities or one.
func readEntities(path string) ([]cedar.Entity, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, engine.MaxFileBytes))
	} else {
		data, err = engine.ReadBounded(path)
	}
	if err != nil {
		return nil, err
	}
	trimmed := strings.TrimSpace(string(data))
	if strings.HasPrefix(trimmed, "{") {
		data = []byte("[" + trimmed + "]")
	}
	m, err := engine.ParseEntities(engine.File{Name: path, Data: data})
	if err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("%s: no entities", path)
	}
	out := make([]cedar.Entity, 0, len(m))
	for _, e := range m {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b cedar.Entity) int { return strings.Compare(a.UID.String(), b.UID.String()) })
	return out, nil
}

func parseUID(s string) (cedar.EntityUID, error) {
	typ, id, ok := strings.Cut(s, ":")
	if !ok || typ == "" || id == "" {
		return cedar.EntityUID{}, fmt.Errorf("%q is not Type:id", s)
	}
	return cedar.NewEntityUID(cedar.EntityType(typ), cedar.String(id)), nil
}
