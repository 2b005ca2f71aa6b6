package schemas

// TypeDeadLetter is the CloudEvent type of a dead letter, published on
// aigov.dlq.<stream>.<consumer> by the audit service.
const TypeDeadLetter = "dev.aigov.deadletter.v1"

// Kinds of dead letter.
const (
	// DeadLetterPoison: the audit could not decode or validate the event.
	DeadLetterPoison = "poison"
	// DeadLetterMaxDeliveries: a consumer reached MaxDeliver on it.
	DeadLetterMaxDeliveries = "max_deliveries"
	// DeadLetterTerminated: a consumer terminated it as permanently bad.
	DeadLetterTerminated = "terminated"
)

// DeadLetter is the data of a dead-letter event: which message of which
// stream a consumer gave up on, why, and its body. Headers are never
// copied: a request's Authorization header must not travel on.
type DeadLetter struct {
	Kind       string `json:"kind"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Subject    string `json:"subject,omitempty"`
	Reason     string `json:"reason"`
	Deliveries uint64 `json:"deliveries,omitempty"`
	// Data is the message body when it is valid UTF-8; DataBase64 holds it
	// otherwise.
	Data       string `json:"data,omitempty"`
	DataBase64 string `json:"data_base64,omitempty"`
	// DataBytes is the size of the original body when Data or DataBase64
	// carry only its beginning: cut so that the dead letter fits
	// MaxDeadLetterBytes (a body JSON-escapes up to six-fold).
	DataBytes int `json:"data_bytes,omitempty"`
}
