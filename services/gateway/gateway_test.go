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
	server := grpc.NewServer(grpc.Creds(serverCreds))
	genmeshv1.RegisterCatalogServiceServer(server, metadataCatalog{})
	grpc_health_v1.RegisterHealthServer(server, health.NewServer())
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)

	cfg, err := parseConfig([]string{"-router=" + listener.Addr().String(), "-router-ca=" + caFile, "-router-server-name=router.test"})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.routerTLS {
		t.Fatal("-router-ca should imply TLS")
	}
	creds, err := routerCredentials(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cfg.router, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	handler, err := newHandler(context.Background(), conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
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
	server := grpc.NewServer(grpc.Creds(serverCreds))
	genmeshv1.RegisterCatalogServiceServer(server, metadataCatalog{})
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)

	cfg, err := parseConfig([]string{"-router=" + listener.Addr().String(), "-router-tls", "-router-server-name=router.test"})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := routerCredentials(cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(cfg.router, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	handler, err := newHandler(context.Background(), conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	recorder := httptest.NewRecorder()
	handler.ServeHTTP(recorder, httptest.NewRequest(http.MethodGet, "/v1/bindings", nil))
	if recorder.Code != http.StatusServiceUnavailable || !strings.Contains(recorder.Body.String(), `"code":14`) {
		t.Errorf("got %d %s", recorder.Code, recorder.Body.String())
	}
}

func TestConfigFromEnvironment(t *testing.T) {
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
	t.Setenv("GENMESH_GATEWAY_ROUTER_TLS", "maybe")
	if _, err := parseConfig(nil); err == nil {
		t.Error("a malformed GENMESH_GATEWAY_ROUTER_TLS should be an error")
	}
}
