package main

import (
	"context"
	_ "embed"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/rs/cors"
	_ "google.golang.org/genproto/googleapis/rpc/errdetails" // resolves google.rpc details in error bodies
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	genmeshv1 "genmesh/gateway/gen/genmesh/v1"
)

//go:embed openapi/genmesh.swagger.json
var openAPIDocument []byte

// incomingHeaderMatcher passes the API key to the router as gRPC metadata; grpc-gateway forwards
// Authorization itself, and the tracing (tracing.go) sends the W3C trace context of its own span.
func incomingHeaderMatcher(key string) (string, bool) {
	if textproto.CanonicalMIMEHeaderKey(key) == "X-Api-Key" {
		return "x-api-key", true
	}
	return runtime.DefaultHeaderMatcher(key)
}

// outgoingHeaderMatcher returns the router's response metadata as Grpc-Metadata-* headers, minus
// the gRPC transport's own (content-type, grpc-*), which mean nothing to an HTTP client.
func outgoingHeaderMatcher(key string) (string, bool) {
	if key == "content-type" || strings.HasPrefix(key, "grpc-") {
		return "", false
	}
	return runtime.MetadataHeaderPrefix + key, true
}

// trailersAsHeaders copies the router's own trailing metadata (x-request-id, x-timing-*) into
// headers of unary responses, where plain HTTP clients see it; the RPC has ended by the time a
// unary response is written, so the trailers are known. Streams start writing before that.
func trailersAsHeaders(ctx context.Context, w http.ResponseWriter, _ proto.Message) error {
	md, ok := runtime.ServerMetadataFromContext(ctx)
	if !ok {
		return nil
	}
	for key, values := range md.TrailerMD {
		if strings.HasPrefix(key, "x-") && len(values) > 0 {
			w.Header().Set(key, values[0])
		}
	}
	return nil
}

// errorHandler writes the google.rpc.Status body with the mapped HTTP status, and on 401 a proper
// challenge: grpc-gateway would put the status message in WWW-Authenticate.
func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, challengeWriter{w}, r, err)
}

type challengeWriter struct{ http.ResponseWriter }

func (c challengeWriter) WriteHeader(code int) {
	if code == http.StatusUnauthorized {
		c.Header().Set("WWW-Authenticate", `Bearer realm="genmesh"`)
	}
	c.ResponseWriter.WriteHeader(code)
}

// ndjson is the JSON marshaler with the newline-delimited media type on streamed responses, so
// clients know to read them line by line.
type ndjson struct{ runtime.JSONPb }

func (ndjson) StreamContentType(any) string { return "application/x-ndjson" }

func newMarshaler() runtime.Marshaler {
	return &ndjson{runtime.JSONPb{
		MarshalOptions:   protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
		UnmarshalOptions: protojson.UnmarshalOptions{},
	}}
}

// newHandler serves the REST bindings of the public services over conn, plus /healthz (the
// router's gRPC health) and /openapi.json, each request in a span of t.
func newHandler(ctx context.Context, conn *grpc.ClientConn, cfg config, t tracing) (http.Handler, error) {
	marshaler := newMarshaler()
	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, marshaler),
		runtime.WithIncomingHeaderMatcher(incomingHeaderMatcher),
		runtime.WithOutgoingHeaderMatcher(outgoingHeaderMatcher),
		runtime.WithErrorHandler(errorHandler),
		runtime.WithForwardResponseOption(trailersAsHeaders),
		runtime.WithForwardResponseOption(spanRequestID),
		runtime.WithMiddlewares(nameByRoute),
		runtime.WithHealthzEndpoint(grpc_health_v1.NewHealthClient(conn)),
	)
	registrations := []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		genmeshv1.RegisterGenerationServiceHandler,
		genmeshv1.RegisterAgentServiceHandler,
		genmeshv1.RegisterCatalogServiceHandler,
		genmeshv1.RegisterTokenizerServiceHandler,
		genmeshv1.RegisterEmbeddingServiceHandler,
	}
	for _, register := range registrations {
		if err := register(ctx, mux, conn); err != nil {
			return nil, err
		}
	}
	err := mux.HandlePath(http.MethodGet, "/openapi.json", func(w http.ResponseWriter, _ *http.Request, _ map[string]string) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPIDocument)
	})
	if err != nil {
		return nil, err
	}
	var handler http.Handler = limitBody(mux, marshaler, cfg.maxBodyBytes)
	if len(cfg.corsOrigins) > 0 {
		handler = cors.New(cors.Options{
			AllowedOrigins: cfg.corsOrigins,
			AllowedMethods: []string{http.MethodGet, http.MethodPost},
			AllowedHeaders: []string{"Content-Type", "X-API-Key", "Authorization", "Traceparent", "Tracestate", "Baggage"},
			MaxAge:         600,
		}).Handler(handler)
	}
	return t.serverHandler(handler), nil
}

// limitBody refuses bodies over limit: at once with 413 when the length is declared, and as a
// decoding error (400) when a chunked body runs over.
func limitBody(next http.Handler, marshaler runtime.Marshaler, limit int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > limit {
			st := status.New(codes.InvalidArgument, fmt.Sprintf("request body of %d bytes exceeds the limit of %d", r.ContentLength, limit))
			body, err := marshaler.Marshal(st.Proto())
			if err != nil {
				http.Error(w, st.Message(), http.StatusRequestEntityTooLarge)
				return
			}
			w.Header().Set("Content-Type", marshaler.ContentType(nil))
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			_, _ = w.Write(body)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
		next.ServeHTTP(w, r)
	})
}
