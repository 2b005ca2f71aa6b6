package httpapi_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/gateway/internal/httpapi"
)

// Every error code the API answers is documented in its OpenAPI document.
func TestOpenAPIDocumentsEveryErrorCode(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "..", "schemas", "openapi", "gateway.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, code := range []string{httpapi.ErrMissingBearer, httpapi.ErrTokenTooLarge, httpapi.ErrMethodNotAllowed, httpapi.ErrUnsupportedMedia,
		httpapi.ErrBodyTooLarge, httpapi.ErrInvalidJSON, httpapi.ErrUnknownField, httpapi.ErrWrongType, httpapi.ErrTrailingData,
		httpapi.ErrInvalidAction, httpapi.ErrInvalidResource, httpapi.ErrInvalidResourceID, httpapi.ErrInvalidID, httpapi.ErrContextTooLarge,
		httpapi.ErrIDConflict, httpapi.ErrOverloaded, httpapi.ErrDecisionTimeout, httpapi.ErrBusRefused, httpapi.ErrBusUnavailable,
		httpapi.ErrShuttingDown, "/v1/authorize"} {
		if !strings.Contains(doc, code) {
			t.Errorf("schemas/openapi/gateway.yaml does not mention %s", code)
		}
	}
}
