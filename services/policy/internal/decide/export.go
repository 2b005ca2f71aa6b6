package decide

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// exportRequestError says what is wrong with a privacy.export request, or
// is empty: it names the person as an erasure does (the key id must be
// theirs) and carries the exporter's ephemeral public key.
func exportRequestError(v schemas.Verified) string {
	if why := eraseRequestError(v); why != "" {
		return why
	}
	pub, _ := v.Request.Context[schemas.ContextExportPublicKey].(string)
	if _, err := personal.ParseExportPublicKey(pub); err != nil {
		return "context.export_public_key must be the base64 of an ephemeral X25519 public key (aigov privacy export sends one): " + err.Error()
	}
	return ""
}

// exportKey answers an allowed privacy.export: the subject's key, wrapped
// to the exporter's ephemeral key, as a header of the reply only. The
// stored decision (and so the audit) never holds it; whoever else reads
// the requester's inbox sees a wrap only its private key opens.
func (s *Service) exportKey(ctx context.Context, v schemas.Verified, d *schemas.Decision) (nats.Header, error) {
	if s.keys == nil {
		return nil, errors.New("subject keys not open yet")
	}
	keyID, _ := v.Request.Context[schemas.ContextSubjectKeyID].(string)
	pubText, _ := v.Request.Context[schemas.ContextExportPublicKey].(string)
	pub, err := personal.ParseExportPublicKey(pubText)
	if err != nil {
		return nil, err // checked before the decision: a bug
	}
	key, err := s.keys.Store().Get(ctx, keyID)
	switch {
	case errors.Is(err, personal.ErrErased):
		d.Reason += "; the subject's key is erased: its sealed values open for no one"
		return nats.Header{schemas.HeaderWrappedSubjectKey: {schemas.WrappedKeyErased}}, nil
	case err != nil:
		return nil, err
	}
	wrapped, err := personal.WrapKey(pub, key, keyID, v.RequestID)
	if err != nil {
		return nil, runtimePermanent(err)
	}
	d.Reason += "; the subject's key is in the reply, wrapped to the exporter's ephemeral key"
	s.log.Info().Str("request_id", v.RequestID).Str("subject_key_id", keyID).Str("principal_id", v.Principal.ID).Msg("subject key exported, wrapped")
	return nats.Header{schemas.HeaderWrappedSubjectKey: {wrapped}}, nil
}
