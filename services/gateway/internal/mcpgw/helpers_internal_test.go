package mcpgw

import (
	"encoding/json"
	"strconv"
)

func toJSON(v any) string { b, _ := json.Marshal(v); return string(b) }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
