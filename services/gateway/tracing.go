package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"
)

// serviceName is the gateway's service.name, in line with the Python services' genmesh-<service>;
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override it as usual.
const serviceName = "genmesh-gateway"

// healthPath is the router health endpoint grpc-gateway serves; probes hit it every few seconds,
// so it gets no spans, as gRPC health checks get none in the Python services.
const healthPath = "/healthz"

// requestIDAttribute matches the attribute the Python services put on their spans.
var requestIDAttribute = attribute.Key("genmesh.request_id")

// tracing is the gateway's part in the mesh's traces: a server span per HTTP request, a client
// span for the router call under it, W3C trace context in from the client and out to the router.
// Without an exporter the provider is a no-op, and the caller's context reaches the router as is.
type tracing struct {
	provider   trace.TracerProvider
	propagator propagation.TextMapPropagator
}

// W3C trace context and baggage, the Python services' default propagators.
var w3cPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// noTracing forwards the trace context and records nothing.
var noTracing = tracing{provider: noop.NewTracerProvider(), propagator: w3cPropagator}

// newTracing exports spans over OTLP/gRPC to endpoint, or records none when it is empty. The
// returned function flushes and stops the exporter.
func newTracing(ctx context.Context, endpoint string) (tracing, func(context.Context) error, error) {
	if endpoint == "" {
		return noTracing, func(context.Context) error { return nil }, nil
	}
	exporter, err := otlptracegrpc.New(ctx, exporterOptions(endpoint)...)
	if err != nil {
		return tracing{}, nil, fmt.Errorf("OTLP exporter for %s: %w", endpoint, err)
	}
	res, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithAttributes(semconv.ServiceName(serviceName), semconv.ServiceNamespace("genmesh")),
		resource.WithFromEnv(),
	)
	if err != nil {
		return tracing{}, nil, fmt.Errorf("telemetry resource: %w", err)
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { slog.Warn("telemetry", "error", err) }))
	provider := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	return tracing{provider: provider, propagator: w3cPropagator}, provider.Shutdown, nil
}

// exporterOptions reads the endpoint as the Python services do: host:port is plaintext gRPC; a
// URL's scheme chooses (http plaintext, https TLS).
func exporterOptions(endpoint string) []otlptracegrpc.Option {
	if strings.Contains(endpoint, "://") {
		return []otlptracegrpc.Option{otlptracegrpc.WithEndpointURL(endpoint)}
	}
	return []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure()}
}

// checkEndpoint refuses what the exporter would silently replace by its localhost default.
func checkEndpoint(endpoint string) error {
	if endpoint == "" {
		return nil
	}
	if strings.Contains(endpoint, "://") {
		u, err := url.Parse(endpoint)
		if err != nil {
			return err
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("%q: want http://host:port, https://host:port or host:port", endpoint)
		}
		return nil
	}
	if _, _, err := net.SplitHostPort(endpoint); err != nil {
		return fmt.Errorf("%q: want host:port or a URL: %w", endpoint, err)
	}
	return nil
}

// serverHandler wraps the whole handler (CORS and body limit included) in the request's span.
func (t tracing) serverHandler(next http.Handler) http.Handler {
	return otelhttp.NewHandler(next, "gateway",
		otelhttp.WithTracerProvider(t.provider),
		otelhttp.WithPropagators(t.propagator),
		otelhttp.WithFilter(func(r *http.Request) bool { return r.URL.Path != healthPath }),
	)
}

// clientHandler gives each router call a client span under the request's and sends its context
// in the call's metadata.
func (t tracing) clientHandler() stats.Handler {
	return otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(t.provider),
		otelgrpc.WithPropagators(t.propagator),
		otelgrpc.WithFilter(filters.Not(filters.HealthCheck())),
	)
}

// nameByRoute renames the request's span after the matched route ("POST /v1/generate"), which
// otelhttp cannot see: grpc-gateway matches routes itself, not through http.ServeMux patterns.
func nameByRoute(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, pathParams map[string]string) {
		if pattern, ok := runtime.HTTPPattern(r.Context()); ok {
			// The compiled pattern spells a plain {binding} as {binding=*}; the route is the template.
			route := strings.ReplaceAll(pattern.String(), "=*}", "}")
			span := trace.SpanFromContext(r.Context())
			span.SetName(r.Method + " " + route)
			span.SetAttributes(semconv.HTTPRoute(route))
		}
		next(w, r, pathParams)
	}
}

// requestID is what responses carrying the request id have in common (unary responses and each
// stream message).
type requestID interface{ GetRequestId() string }

// spanRequestID puts the request id the router answered with on the request's span; it runs for
// unary responses and for every message of a stream.
func spanRequestID(ctx context.Context, _ http.ResponseWriter, m proto.Message) error {
	span := trace.SpanFromContext(ctx)
	if r, ok := m.(requestID); ok && span.IsRecording() {
		if id := r.GetRequestId(); id != "" {
			span.SetAttributes(requestIDAttribute.String(id))
		}
	}
	return nil
}
