package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// config is what the gateway needs to know; every flag also reads a GENMESH_GATEWAY_* variable so
// the same binary is configured by `genmesh up`, a container or a shell alike.
type config struct {
	listen           string
	router           string
	routerTLS        bool
	routerCA         string
	routerServerName string
	corsOrigins      []string
	maxBodyBytes     int64
	otlpEndpoint     string
}

func parseConfig(args []string) (config, error) {
	fs := flag.NewFlagSet("genmesh-gateway", flag.ContinueOnError)
	var c config
	var cors string
	var errs []error
	envBool := func(name string) bool {
		v, err := strconv.ParseBool(envOr(name, "false"))
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		return v
	}
	maxBody, err := strconv.ParseInt(envOr("GENMESH_GATEWAY_MAX_BODY_BYTES", "33554432"), 10, 64)
	if err != nil {
		errs = append(errs, fmt.Errorf("GENMESH_GATEWAY_MAX_BODY_BYTES: %w", err))
	}
	fs.StringVar(&c.listen, "listen", envOr("GENMESH_GATEWAY_LISTEN", ":8080"),
		"HTTP listen address (env GENMESH_GATEWAY_LISTEN)")
	fs.StringVar(&c.router, "router", envOr("GENMESH_GATEWAY_ROUTER", "localhost:50051"),
		"router gRPC address (env GENMESH_GATEWAY_ROUTER)")
	fs.BoolVar(&c.routerTLS, "router-tls", envBool("GENMESH_GATEWAY_ROUTER_TLS"),
		"use TLS to the router, verified against the system roots or -router-ca (env GENMESH_GATEWAY_ROUTER_TLS)")
	fs.StringVar(&c.routerCA, "router-ca", envOr("GENMESH_GATEWAY_ROUTER_CA", ""),
		"PEM file of CAs that sign the router's certificate; implies -router-tls (env GENMESH_GATEWAY_ROUTER_CA)")
	fs.StringVar(&c.routerServerName, "router-server-name", envOr("GENMESH_GATEWAY_ROUTER_SERVER_NAME", ""),
		"name to verify in the router's certificate, when it differs from the address (env GENMESH_GATEWAY_ROUTER_SERVER_NAME)")
	fs.StringVar(&cors, "cors-origins", envOr("GENMESH_GATEWAY_CORS_ORIGINS", ""),
		"comma-separated origins allowed by CORS, or *; empty disables CORS (env GENMESH_GATEWAY_CORS_ORIGINS)")
	fs.Int64Var(&c.maxBodyBytes, "max-body-bytes", maxBody,
		"largest request body accepted, in bytes (env GENMESH_GATEWAY_MAX_BODY_BYTES)")
	fs.StringVar(&c.otlpEndpoint, "otlp-endpoint", otlpEndpointFromEnv(),
		"OTLP/gRPC endpoint spans are exported to, host:port (plaintext) or an http(s) URL; none when empty "+
			"(env GENMESH_GATEWAY_OTLP_ENDPOINT, else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT)")
	if err := errors.Join(errs...); err != nil {
		return c, err
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.maxBodyBytes <= 0 {
		return c, errors.New("max-body-bytes must be positive")
	}
	if err := checkEndpoint(c.otlpEndpoint); err != nil {
		return c, fmt.Errorf("otlp-endpoint %w", err)
	}
	if c.routerCA != "" || c.routerServerName != "" {
		c.routerTLS = true
	}
	for _, origin := range strings.Split(cors, ",") {
		if origin = strings.TrimSpace(origin); origin != "" {
			c.corsOrigins = append(c.corsOrigins, origin)
		}
	}
	return c, nil
}

// otlpEndpointFromEnv is the gateway's own setting, else the standard OpenTelemetry variables.
func otlpEndpointFromEnv() string {
	for _, name := range []string{"GENMESH_GATEWAY_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} {
		if v := os.Getenv(name); v != "" {
			return v
		}
	}
	return ""
}

func envOr(name, fallback string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return fallback
}
