package testutil

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Bench logs one line of figures for bench/scale.sh, which reads a test's
// -v output: "BENCH where key=value ...", where is "guest" or "host".
// Values are numbers; a time.Duration is written in seconds. A key given
// again (by the same or a later line) is another repetition of the figure.
// Bench asserts nothing: speed is reported, never tested.
func Bench(t testing.TB, where string, kv ...any) {
	t.Helper()
	if len(kv)%2 != 0 {
		t.Fatalf("testutil.Bench: odd number of arguments %v", kv)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "BENCH %s", where)
	for i := 0; i < len(kv); i += 2 {
		switch v := kv[i+1].(type) {
		case time.Duration:
			fmt.Fprintf(&b, " %s=%.4g", kv[i], v.Seconds())
		case float64:
			fmt.Fprintf(&b, " %s=%.4g", kv[i], v)
		default:
			fmt.Fprintf(&b, " %s=%v", kv[i], v)
		}
	}
	t.Log(b.String())
}
