// Command genmesh-gateway serves the genmesh gRPC API as REST/JSON (grpc-gateway v2): the
// google.api.http bindings of the router's public services, newline-delimited JSON for server
// streams, google.rpc.Status bodies for errors, the OpenAPI document and a health endpoint.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// maxMessageBytes bounds router responses: generated images and audio are far over gRPC's 4 MiB default.
const maxMessageBytes = 256 << 20

func main() {
	cfg, err := parseConfig(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err == nil {
		err = run(cfg)
	}
	if err != nil {
		slog.Error("gateway failed", "error", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tracer, stopTracing, err := newTracing(ctx, cfg.otlpEndpoint)
	if err != nil {
		return err
	}
	// Runs last: the spans of the requests drained below are flushed before the process exits.
	defer func() {
		flushCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(flushCtx); err != nil {
			slog.Warn("flushing spans", "error", err)
		}
	}()
	conn, err := dialRouter(cfg, tracer)
	if err != nil {
		return err
	}
	defer conn.Close()

	handler, err := newHandler(ctx, conn, cfg, tracer)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	slog.Info("gateway serving", "listen", listener.Addr().String(), "router", cfg.router, "tls", cfg.routerTLS,
		"otlp_endpoint", cfg.otlpEndpoint)
	announce(listener.Addr().(*net.TCPAddr).Port)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(listener) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	// Let in-flight requests (streams included) finish for a while, then cut them.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return srv.Close()
	}
	return nil
}

// announce prints the line every genmesh service prints once it listens, so launchers and tests
// wait for the gateway as they do for the others (and learn the port when it was 0).
func announce(port int) {
	line, _ := json.Marshal(map[string]any{"event": "listening", "service": "gateway", "port": port, "ready": true})
	fmt.Println(string(line))
}

// dialRouter opens the channel to the router (connected lazily), each call traced by t.
func dialRouter(cfg config, t tracing) (*grpc.ClientConn, error) {
	creds, err := routerCredentials(cfg)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(cfg.router,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.MaxCallSendMsgSize(maxMessageBytes)),
		grpc.WithStatsHandler(t.clientHandler()),
	)
	if err != nil {
		return nil, fmt.Errorf("router %s: %w", cfg.router, err)
	}
	return conn, nil
}

func routerCredentials(cfg config) (credentials.TransportCredentials, error) {
	if !cfg.routerTLS {
		return insecure.NewCredentials(), nil
	}
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.routerServerName}
	if cfg.routerCA != "" {
		pem, err := os.ReadFile(cfg.routerCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificates", cfg.routerCA)
		}
		tlsConfig.RootCAs = pool
	}
	return credentials.NewTLS(tlsConfig), nil
}
