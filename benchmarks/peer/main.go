// Command peer is the "real peer" of `sms-connector bench --peer redpanda-connect`: the Benthos
// stream engine (github.com/redpanda-data/benthos/v4, the MIT-licensed core of Redpanda Connect)
// with its own `io` and `pure` components (http processor, branch, mapping, ...), plus two small
// plugins written here because that core ships no Kafka connector: `sms_kafka` input and output on
// github.com/twmb/franz-go. Benthos' engine runs the pipeline (reading, per-thread processing,
// acknowledgement, output in-flight control); the plugins only move records between Kafka and it.
//
// Usage: peer -c config.yaml   (the bench writes the config; see connector/devtools/peer.py)
package main

import (
	"context"
	"net/http"
	"os"
	"strconv"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
)

func main() {
	// Go's default transport keeps 2 idle connections per host; at 64 calls in flight that would
	// open a new connection for most requests. The connector keeps a pool as large as its
	// concurrency, so the peer gets the same (PEER_HTTP_IDLE_PER_HOST, default 256).
	idle := 256
	if v, err := strconv.Atoi(os.Getenv("PEER_HTTP_IDLE_PER_HOST")); err == nil && v > 0 {
		idle = v
	}
	if t, ok := http.DefaultTransport.(*http.Transport); ok {
		t.MaxIdleConns = idle
		t.MaxIdleConnsPerHost = idle
	}
	registerKafka()
	service.RunCLI(context.Background())
}
