package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	genmeshv1 "genmesh/gateway/gen/genmesh/v1"
)

// metadataCatalog answers ListBindings with one binding per metadata entry the gateway forwarded.
type metadataCatalog struct {
	genmeshv1.UnimplementedCatalogServiceServer
}

func (metadataCatalog) ListBindings(ctx context.Context, _ *genmeshv1.ListBindingsRequest) (*genmeshv1.ListBindingsResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	response := &genmeshv1.ListBindingsResponse{}
	for _, key := range []string{"x-api-key", "authorization", "traceparent"} {
		for _, value := range md.Get(key) {
			response.Bindings = append(response.Bindings, &genmeshv1.Binding{Name: key, Description: value})
		}
	}
	return response, nil
}

// tracedGeneration answers Generate with the request's id and records the traceparent it got.
type tracedGeneration struct {
	genmeshv1.UnimplementedGenerationServiceServer
	traceparents chan string
}

func (g tracedGeneration) Generate(ctx context.Context, request *genmeshv1.GenerateRequest) (*genmeshv1.GenerateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	g.traceparents <- strings.Join(md.Get("traceparent"), ",")
	return &genmeshv1.GenerateResponse{RequestId: request.GetRequestId()}, nil
}

// startRouter serves a router stand-in (catalog, generation, health) on loopback and returns its
// address; generation reports the trace context of each call on the returned channel.
func startRouter(t *testing.T, opts ...grpc.ServerOption) (string, <-chan string) {
	t.Helper()
	traceparents := make(chan string, 8)
	server := grpc.NewServer(opts...)
	genmeshv1.RegisterCatalogServiceServer(server, metadataCatalog{})
	genmeshv1.RegisterGenerationServiceServer(server, tracedGeneration{traceparents: traceparents})
	grpc_health_v1.RegisterHealthServer(server, health.NewServer())
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	return listener.Addr().String(), traceparents
}

// gatewayHandler is the gateway's handler in front of the router in cfg, traced by tr.
func gatewayHandler(t *testing.T, cfg config, tr tracing) http.Handler {
	t.Helper()
	conn, err := dialRouter(cfg, tr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	handler, err := newHandler(context.Background(), conn, cfg, tr)
	if err != nil {
		t.Fatal(err)
	}
	return handler
}

// selfSigned writes a certificate for "router.test" and returns the server credentials and the
// PEM file clients trust.
func selfSigned(t *testing.T) (credentials.TransportCredentials, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "router.test"},
		DNSNames:              []string{"router.test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	return credentials.NewServerTLSFromCert(&cert), caFile
}

// TestTLSRouterAndMetadata runs a TLS router stand-in and checks that the gateway verifies it
// against -router-ca and -router-server-name, forwards the key, bearer token and trace context,
// and reports the router's health.
func TestTLSRouterAndMetadata(t *testing.T) {
	serverCreds, caFile := selfSigned(t)
	router, _ := startRouter(t, grpc.Creds(serverCreds))

	cfg, err := parseConfig([]string{"-router=" + router, "-router-ca=" + caFile, "-router-server-name=router.test"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.routerTLS {
		t.Fatal("-router-ca should imply TLS")
	}
	handler := gatewayHandler(t, cfg, noTracing)
	gateway := httptest.NewServer(handler)
	t.Cleanup(gateway.Close)

	request, _ := http.NewRequest(http.MethodGet, gateway.URL+"/v1/bindings", nil)
	request.Header.Set("X-API-Key", "k1")
	request.Header.Set("Authorization", "Bearer k2")
	request.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatal(err)
	}
	defer response.Body.Close()
	var body struct {
		Bindings []struct{ Name, Description string }
	}
	if err := json.NewDecoder(response.Body).Decode(&body); err != nil || response.StatusCode != http.StatusOK {
		t.Fatalf("status %d, decode error %v", response.StatusCode, err)
	}
	got := map[string]string{}
	for _, b := range body.Bindings {
		got[b.Name] = b.Description
	}
	want := map[string]string{"x-api-key": "k1", "authorization": "Bearer k2", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("metadata %s = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}

	health, err := http.Get(gateway.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer health.Body.Close()
	if health.StatusCode != http.StatusOK {
		t.Errorf("/healthz: %d", health.StatusCode)
	}
}

// TestUntrustedRouterIsUnavailable checks that TLS verification is not skipped: without the CA the
// router's certificate is refused and the client gets 503 with a Status body.
func TestUntrustedRouterIsUnavailable(t *testing.T) {
	serverCreds, _ := selfSigned(t)
	router, _ := startRouter(t, grpc.Creds(serverCreds))

	cfg, err := parseConfig([]string{"-router=" + router, "-router-tls", "-router-server-name=router.test"})
	if err != nil {
		t.Fatal(err)
	}
	handler := gatewayHandler(t, cfg, noTracing)
	recorder := httptest.NewRecorder()
	handler.ServeHTTP(recorder, httptest.NewRequest(http.MethodGet, "/v1/bindings", nil))
	if recorder.Code != http.StatusServiceUnavailable || !strings.Contains(recorder.Body.String(), `"code":14`) {
		t.Errorf("got %d %s", recorder.Code, recorder.Body.String())
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	for _, name := range []string{"GENMESH_GATEWAY_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		t.Setenv(name, "")
	}
	t.Setenv("GENMESH_GATEWAY_ROUTER", "router:1234")
	t.Setenv("GENMESH_GATEWAY_CORS_ORIGINS", "http://a.example, http://b.example")
	t.Setenv("GENMESH_GATEWAY_MAX_BODY_BYTES", "1024")
	cfg, err := parseConfig([]string{"-listen=:9999"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.router != "router:1234" || cfg.listen != ":9999" || cfg.maxBodyBytes != 1024 ||
		len(cfg.corsOrigins) != 2 || cfg.corsOrigins[1] != "http://b.example" || cfg.routerTLS {
		t.Errorf("unexpected config %+v", cfg)
	}
	if cfg.otlpEndpoint != "" {
		t.Errorf("no OTLP endpoint was configured, got %q", cfg.otlpEndpoint)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
	if cfg, err := parseConfig(nil); err != nil || cfg.otlpEndpoint != "http://collector:4317" {
		t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT: %q, %v", cfg.otlpEndpoint, err)
	}
	t.Setenv("GENMESH_GATEWAY_OTLP_ENDPOINT", "otel.monitoring:4317")
	if cfg, err := parseConfig(nil); err != nil || cfg.otlpEndpoint != "otel.monitoring:4317" {
		t.Errorf("GENMESH_GATEWAY_OTLP_ENDPOINT should win: %q, %v", cfg.otlpEndpoint, err)
	}
	for _, endpoint := range []string{"collector", "ftp://collector:4317", "http://"} {
		if _, err := parseConfig([]string{"-otlp-endpoint=" + endpoint}); err == nil {
			t.Errorf("-otlp-endpoint=%s should be an error", endpoint)
		}
	}
	t.Setenv("GENMESH_GATEWAY_ROUTER_TLS", "maybe")
	if _, err := parseConfig(nil); err == nil {
		t.Error("a malformed GENMESH_GATEWAY_ROUTER_TLS should be an error")
	}
}

// recordingGateway is the gateway in front of a router stand-in, its spans kept in the recorder.
func recordingGateway(t *testing.T) (http.Handler, *tracetest.SpanRecorder, <-chan string) {
	t.Helper()
	recorder := tracetest.NewSpanRecorder()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	t.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	router, traceparents := startRouter(t)
	cfg, err := parseConfig([]string{"-router=" + router})
	if err != nil {
		t.Fatal(err)
	}
	return gatewayHandler(t, cfg, tracing{provider: provider, propagator: w3cPropagator}), recorder, traceparents
}

// TestRequestSpans checks the gateway's part in a trace: a server span named after the route,
// child of the caller's context, with the route, status and request id; a client span for the
// router call under it, whose context is what the router receives; no spans for /healthz.
func TestRequestSpans(t *testing.T) {
	handler, recorder, traceparents := recordingGateway(t)
	gateway := httptest.NewServer(handler)
	t.Cleanup(gateway.Close)

	const traceID, callerSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	request, _ := http.NewRequest(http.MethodPost, gateway.URL+"/v1/generate", strings.NewReader(`{"request_id": "r-42"}`))
	request.Header.Set("Traceparent", "00-"+traceID+"-"+callerSpan+"-01")
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		t.Fatal(err)
	}
	response.Body.Close()
	if response.StatusCode != http.StatusOK {
		t.Fatalf("status %d", response.StatusCode)
	}
	health, err := http.Get(gateway.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	health.Body.Close()

	spans := recorder.Ended()
	if len(spans) != 2 {
		t.Fatalf("want the request's server and client spans only, got %d: %v", len(spans), spans)
	}
	server, client := spans[1], spans[0]
	if server.Name() != "POST /v1/generate" || server.SpanKind() != trace.SpanKindServer {
		t.Errorf("server span %q (%v)", server.Name(), server.SpanKind())
	}
	if server.SpanContext().TraceID().String() != traceID || server.Parent().SpanID().String() != callerSpan {
		t.Errorf("server span in trace %s under %s, want %s under %s",
			server.SpanContext().TraceID(), server.Parent().SpanID(), traceID, callerSpan)
	}
	attributes := map[attribute.Key]attribute.Value{}
	for _, kv := range server.Attributes() {
		attributes[kv.Key] = kv.Value
	}
	for key, want := range map[attribute.Key]string{"http.route": "/v1/generate", "genmesh.request_id": "r-42"} {
		if got := attributes[key].Emit(); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if got := attributes["http.response.status_code"].AsInt64(); got != http.StatusOK {
		t.Errorf("http.response.status_code = %d", got)
	}
	if client.Name() != "genmesh.v1.GenerationService/Generate" || client.SpanKind() != trace.SpanKindClient ||
		client.Parent().SpanID() != server.SpanContext().SpanID() {
		t.Errorf("client span %q (%v) under %s, want under the server span %s",
			client.Name(), client.SpanKind(), client.Parent().SpanID(), server.SpanContext().SpanID())
	}
	want := "00-" + traceID + "-" + client.SpanContext().SpanID().String() + "-01"
	if got := <-traceparents; got != want {
		t.Errorf("router got traceparent %q, want %q", got, want)
	}
}

// TestSpanNames checks that spans take the route's template, and only the method without a route.
func TestSpanNames(t *testing.T) {
	handler, recorder, _ := recordingGateway(t)
	for path, want := range map[string]string{"/v1/models/echo/info": "GET /v1/models/{binding}/info", "/v2/nothing": "GET"} {
		handler.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, path, nil))
		var names []string
		for _, span := range recorder.Ended() {
			if span.SpanKind() == trace.SpanKindServer {
				names = append(names, span.Name())
			}
		}
		if len(names) == 0 || names[len(names)-1] != want {
			t.Errorf("%s: server spans %v, want the last named %q", path, names, want)
		}
	}
}
