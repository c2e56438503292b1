package main

// The Kafka input and output the Benthos core lacks, as plugins on its public/service API.
//
// sms_kafka input: one consumer-group member (franz-go). Read hands Benthos one record at a time
// with an ack; offsets are committed (every commit_period) only up to the first record of each
// partition not yet acknowledged, so a record's offset is committed only after its result was
// written (at-least-once, like the connector). Nacks are retried by service.AutoRetryNacks.
// Metadata: kafka_key, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp_ms and
// kafka_timestamp (the record's CreateTime, RFC 3339 with milliseconds, UTC).
//
// sms_kafka output: a batch output producing each message to one topic, keyed by the kafka_key
// metadata, waiting for the broker's acks (acks=all, uncompressed, no idempotent producer: Tansu
// lacks it).

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/redpanda-data/benthos/v4/public/service"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kversion"
)

// kafkaLog: franz-go's own log on stderr when PEER_KAFKA_LOG is debug, info, warn or error.
func kafkaLog() []kgo.Opt {
	levels := map[string]kgo.LogLevel{"debug": kgo.LogLevelDebug, "info": kgo.LogLevelInfo,
		"warn": kgo.LogLevelWarn, "error": kgo.LogLevelError}
	if level, ok := levels[os.Getenv("PEER_KAFKA_LOG")]; ok {
		return []kgo.Opt{kgo.WithLogger(kgo.BasicLogger(os.Stderr, level, nil))}
	}
	return nil
}

// clientOpts: what both plugins share: seed brokers, an optional protocol cap, the log.
func clientOpts(conf *service.ParsedConfig) ([]kgo.Opt, error) {
	seeds, err := conf.FieldStringList("seed_brokers")
	if err != nil {
		return nil, err
	}
	opts := append([]kgo.Opt{kgo.SeedBrokers(seeds...)}, kafkaLog()...)
	capVersion, err := conf.FieldString("max_version")
	if err != nil || capVersion == "" {
		return opts, err
	}
	versions := kversion.FromString(capVersion)
	if versions == nil {
		return nil, fmt.Errorf("max_version %q is not a Kafka version franz-go knows", capVersion)
	}
	return append(opts, kgo.MaxVersions(versions)), nil
}

// commonFields: seed_brokers and max_version (e.g. "2.3.0" for brokers that close the connection
// on a newer ApiVersions request instead of answering UNSUPPORTED_VERSION).
func commonFields(spec *service.ConfigSpec) *service.ConfigSpec {
	return spec.Field(service.NewStringListField("seed_brokers")).
		Field(service.NewStringField("max_version").Default(""))
}

func registerKafka() {
	in := commonFields(service.NewConfigSpec().
		Summary("Consumes topics as one consumer-group member; commits acknowledged offsets in order.")).
		Field(service.NewStringListField("topics")).
		Field(service.NewStringField("consumer_group")).
		Field(service.NewDurationField("fetch_max_wait").Default("100ms")).
		Field(service.NewDurationField("commit_period").Default("100ms"))
	service.MustRegisterInput("sms_kafka", in, func(conf *service.ParsedConfig, mgr *service.Resources) (service.Input, error) {
		r, err := newReader(conf)
		if err != nil {
			return nil, err
		}
		return service.AutoRetryNacks(r), nil
	})

	out := commonFields(service.NewConfigSpec().
		Summary("Produces each message to one topic, keyed by the kafka_key metadata.")).
		Field(service.NewStringField("topic")).
		Field(service.NewDurationField("linger").Default("5ms")).
		Field(service.NewOutputMaxInFlightField().Default(64)).
		Field(service.NewBatchPolicyField("batching"))
	service.MustRegisterBatchOutput("sms_kafka", out, func(conf *service.ParsedConfig, mgr *service.Resources) (service.BatchOutput, service.BatchPolicy, int, error) {
		var policy service.BatchPolicy
		w, err := newWriter(conf)
		if err != nil {
			return nil, policy, 0, err
		}
		if policy, err = conf.FieldBatchPolicy("batching"); err != nil {
			return nil, policy, 0, err
		}
		inFlight, err := conf.FieldMaxInFlight()
		return w, policy, inFlight, err
	})
}

// --- input -------------------------------------------------------------------------------------

// partitionAcks tracks one partition's records in read order; done is the set acknowledged.
type partitionAcks struct {
	queue []int64
	done  map[int64]bool
	next  int64 // offset to commit (first not acknowledged); -1 until one is acknowledged
}

type reader struct {
	opts    []kgo.Opt
	period  time.Duration
	client  *kgo.Client
	pending []*kgo.Record

	mu     sync.Mutex
	parts  map[string]map[int32]*partitionAcks
	dirty  bool
	stop   chan struct{}
	closed sync.WaitGroup
}

func newReader(conf *service.ParsedConfig) (*reader, error) {
	opts, err := clientOpts(conf)
	if err != nil {
		return nil, err
	}
	topics, err := conf.FieldStringList("topics")
	if err != nil {
		return nil, err
	}
	group, err := conf.FieldString("consumer_group")
	if err != nil {
		return nil, err
	}
	wait, err := conf.FieldDuration("fetch_max_wait")
	if err != nil {
		return nil, err
	}
	period, err := conf.FieldDuration("commit_period")
	if err != nil {
		return nil, err
	}
	r := &reader{period: period, parts: map[string]map[int32]*partitionAcks{}, stop: make(chan struct{})}
	r.opts = append(opts,
		kgo.ConsumeTopics(topics...), kgo.ConsumerGroup(group),
		kgo.DisableAutoCommit(), kgo.FetchMaxWait(wait),
		// As the connector's and the faust baseline's consumers: a 10 s session, 2 s heartbeats.
		kgo.SessionTimeout(10*time.Second), kgo.RebalanceTimeout(10*time.Second),
		kgo.HeartbeatInterval(2*time.Second),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.OnPartitionsRevoked(r.revoked), kgo.OnPartitionsLost(r.lost),
	)
	return r, nil
}

func (r *reader) Connect(ctx context.Context) error {
	cl, err := kgo.NewClient(r.opts...)
	if err != nil {
		return err
	}
	r.client = cl
	r.closed.Add(1)
	go r.commitLoop()
	return nil
}

func (r *reader) Read(ctx context.Context) (*service.Message, service.AckFunc, error) {
	for len(r.pending) == 0 {
		fetches := r.client.PollFetches(ctx)
		if fetches.IsClientClosed() {
			return nil, nil, service.ErrEndOfInput
		}
		if err := ctx.Err(); err != nil {
			return nil, nil, err
		}
		// Per-partition fetch errors are retried by franz-go itself; only records matter here.
		recs := fetches.Records()
		r.mu.Lock()
		for _, rec := range recs {
			pa := r.partition(rec.Topic, rec.Partition)
			pa.queue = append(pa.queue, rec.Offset)
		}
		r.mu.Unlock()
		r.pending = append(r.pending, recs...)
	}
	rec := r.pending[0]
	r.pending = r.pending[1:]
	msg := service.NewMessage(rec.Value)
	msg.MetaSet("kafka_key", string(rec.Key))
	msg.MetaSet("kafka_topic", rec.Topic)
	msg.MetaSet("kafka_partition", strconv.Itoa(int(rec.Partition)))
	msg.MetaSet("kafka_offset", strconv.FormatInt(rec.Offset, 10))
	msg.MetaSet("kafka_timestamp_ms", strconv.FormatInt(rec.Timestamp.UnixMilli(), 10))
	msg.MetaSet("kafka_timestamp", rec.Timestamp.UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	topic, partition, offset := rec.Topic, rec.Partition, rec.Offset
	return msg, func(ctx context.Context, err error) error {
		if err == nil {
			r.acked(topic, partition, offset)
		}
		return nil
	}, nil
}

func (r *reader) partition(topic string, p int32) *partitionAcks {
	byP := r.parts[topic]
	if byP == nil {
		byP = map[int32]*partitionAcks{}
		r.parts[topic] = byP
	}
	pa := byP[p]
	if pa == nil {
		pa = &partitionAcks{done: map[int64]bool{}, next: -1}
		byP[p] = pa
	}
	return pa
}

func (r *reader) acked(topic string, p int32, offset int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	pa := r.partition(topic, p)
	pa.done[offset] = true
	for len(pa.queue) > 0 && pa.done[pa.queue[0]] {
		delete(pa.done, pa.queue[0])
		pa.next = pa.queue[0] + 1
		pa.queue = pa.queue[1:]
		r.dirty = true
	}
}

// committable returns the offsets to commit now (nil when nothing changed since the last call).
func (r *reader) committable() map[string]map[int32]kgo.EpochOffset {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.dirty {
		return nil
	}
	r.dirty = false
	out := map[string]map[int32]kgo.EpochOffset{}
	for topic, byP := range r.parts {
		for p, pa := range byP {
			if pa.next < 0 {
				continue
			}
			if out[topic] == nil {
				out[topic] = map[int32]kgo.EpochOffset{}
			}
			out[topic][p] = kgo.EpochOffset{Epoch: -1, Offset: pa.next}
		}
	}
	return out
}

func (r *reader) commit(ctx context.Context, cl *kgo.Client) {
	if offsets := r.committable(); len(offsets) > 0 {
		cl.CommitOffsetsSync(ctx, offsets, nil)
	}
}

func (r *reader) commitLoop() {
	defer r.closed.Done()
	tick := time.NewTicker(r.period)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
			r.commit(context.Background(), r.client)
		}
	}
}

// revoked: commit what is acknowledged, then forget those partitions (a new owner re-reads the rest).
func (r *reader) revoked(ctx context.Context, cl *kgo.Client, gone map[string][]int32) {
	r.commit(ctx, cl)
	r.lost(ctx, cl, gone)
}

func (r *reader) lost(_ context.Context, _ *kgo.Client, gone map[string][]int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for topic, ps := range gone {
		for _, p := range ps {
			delete(r.parts[topic], p)
		}
	}
}

func (r *reader) Close(ctx context.Context) error {
	if r.client == nil {
		return nil
	}
	close(r.stop)
	r.closed.Wait()
	r.commit(ctx, r.client)
	r.client.Close()
	return nil
}

// --- output ------------------------------------------------------------------------------------

type writer struct {
	opts   []kgo.Opt
	topic  string
	client *kgo.Client
}

func newWriter(conf *service.ParsedConfig) (*writer, error) {
	opts, err := clientOpts(conf)
	if err != nil {
		return nil, err
	}
	topic, err := conf.FieldString("topic")
	if err != nil {
		return nil, err
	}
	linger, err := conf.FieldDuration("linger")
	if err != nil {
		return nil, err
	}
	return &writer{topic: topic, opts: append(opts,
		kgo.DisableIdempotentWrite(), kgo.RequiredAcks(kgo.AllISRAcks()), kgo.ProducerLinger(linger),
		// Uncompressed, like the connector's producer (franz-go would default to snappy).
		kgo.ProducerBatchCompression(kgo.NoCompression()),
	)}, nil
}

func (w *writer) Connect(ctx context.Context) error {
	cl, err := kgo.NewClient(w.opts...)
	if err != nil {
		return err
	}
	w.client = cl
	return nil
}

func (w *writer) WriteBatch(ctx context.Context, batch service.MessageBatch) error {
	recs := make([]*kgo.Record, 0, len(batch))
	for _, m := range batch {
		value, err := m.AsBytes()
		if err != nil {
			return err
		}
		rec := &kgo.Record{Topic: w.topic, Value: value}
		if key, ok := m.MetaGet("kafka_key"); ok && key != "" {
			rec.Key = []byte(key)
		}
		recs = append(recs, rec)
	}
	return w.client.ProduceSync(ctx, recs...).FirstErr()
}

func (w *writer) Close(ctx context.Context) error {
	if w.client != nil {
		w.client.Close()
	}
	return nil
}
