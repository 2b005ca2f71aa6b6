package schemas

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
)

// JSON Schema file names inside JSONSchemas(). Each is a draft 2020-12
// schema whose $id is SchemaBaseURL plus the name, so relative $refs between
// them resolve once all files are loaded into one compiler.
const (
	SchemaEvent      = "event.json"
	SchemaRequest    = "request.json"
	SchemaVerified   = "verified.json"
	SchemaDecision   = "decision.json"
	SchemaSession    = "session.json"
	SchemaRevocation = "revocation.json"
)

// SchemaBaseURL is the prefix of every schema's $id. It names the schemas;
// nothing is fetched from it.
const SchemaBaseURL = "https://github.com/aigov/aigov/schemas/json/"

// ErrUnknownEventType is wrapped (with ErrInvalidEvent) when an event type
// has no schema.
var ErrUnknownEventType = errors.New("unknown event type")

// The files are embedded read-only; nothing writes to this variable.
//
//go:embed json/*.json
var jsonSchemaFiles embed.FS

// JSONSchemas returns the JSON Schemas of every aigov event, named as the
// Schema* constants, at the root of the returned file system.
func JSONSchemas() fs.FS {
	sub, err := fs.Sub(jsonSchemaFiles, "json")
	if err != nil {
		// fs.Sub fails only for an invalid directory name, and "json" is a
		// constant valid one.
		panic(fmt.Sprintf("schemas: embedded json directory: %v", err))
	}
	return sub
}

// SchemaFor returns the name of the JSON Schema, inside JSONSchemas(), that
// the data of a CloudEvent of eventType conforms to. The envelope itself
// conforms to SchemaEvent, which applies this same mapping to its data.
func SchemaFor(eventType string) (string, error) {
	switch eventType {
	case TypeRequest:
		return SchemaRequest, nil
	case TypeVerified:
		return SchemaVerified, nil
	case TypeDecision:
		return SchemaDecision, nil
	case TypeSessionStarted, TypeSessionExpired, TypeSessionRevoked, TypeSessionTokenSeen, TypeLeaseStarted, TypeLeaseExpired:
		return SchemaSession, nil
	case TypePolicyChanged, TypePolicyRejected:
		return SchemaPolicy, nil
	case TypeEntityChanged:
		return SchemaEntity, nil
	case TypeSubjectErased:
		return SchemaPrivacy, nil
	case TypeApprovalUsed:
		return SchemaApproval, nil
	case TypeApprovalRequested, TypeApprovalGranted, TypeApprovalApproved, TypeApprovalRejected, TypeApprovalExpired:
		return SchemaApprovalRequest, nil
	default:
		return "", fmt.Errorf("%w: %w %q: no JSON schema", ErrInvalidEvent, ErrUnknownEventType, eventType)
	}
}
