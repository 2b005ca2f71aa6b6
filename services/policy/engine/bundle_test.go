package engine

import (
	"testing"

	cedar "github.com/cedar-policy/cedar-go"
)

// A store key names its entity both ways, so that a delete, which carries
// only the key, is recorded under the entity's own id and not its base64.
func TestParseEntityKeyInvertsEntityKey(t *testing.T) {
	t.Parallel()
	for _, uid := range []cedar.EntityUID{
		cedar.NewEntityUID("Model", "newcomer-model"),
		cedar.NewEntityUID("Dataset", "s3://bucket/a.b/c"),
		cedar.NewEntityUID("Tool", "sql.query"),
	} {
		got, ok := ParseEntityKey(EntityKey(uid))
		if !ok || got != uid {
			t.Errorf("ParseEntityKey(EntityKey(%s)) = %s, %v", uid, got, ok)
		}
	}
	if got, _ := ParseEntityKey("Model.bmV3Y29tZXItbW9kZWw"); got.ID != "newcomer-model" {
		t.Errorf("the README's example key decodes to %q", got.ID)
	}
	for _, bad := range []string{"", "Model", ".abc", "Model.!!"} {
		if _, ok := ParseEntityKey(bad); ok {
			t.Errorf("ParseEntityKey(%q) accepted a malformed key", bad)
		}
	}
}
