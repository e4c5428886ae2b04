// Command genmesh-example calls the genmesh router over gRPC from Go: Generate, then
// GenerateStream with the text printed as it arrives. With -json it prints one JSON object
// instead: the unary response, the streamed text and the stream's final response.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	genmeshv1 "genmesh/gateway/gen/genmesh/v1"
)

func main() {
	address := flag.String("address", "127.0.0.1:50051", "router address")
	key := flag.String("key", os.Getenv("GENMESH_API_KEY"), "API key (default $GENMESH_API_KEY)")
	binding := flag.String("binding", "", "binding; empty takes the default text binding")
	maxTokens := flag.Int("max-tokens", 64, "largest number of tokens to generate")
	asJSON := flag.Bool("json", false, "print one JSON object instead of text")
	flag.Parse()
	prompt := strings.Join(flag.Args(), " ")
	if prompt == "" {
		fmt.Fprintln(os.Stderr, "usage: genmesh-example [flags] PROMPT")
		os.Exit(2)
	}
	if err := run(*address, *key, textRequest(prompt, *binding, int32(*maxTokens)), *asJSON); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

func textRequest(prompt, binding string, maxTokens int32) *genmeshv1.GenerateRequest {
	return &genmeshv1.GenerateRequest{
		Task:    genmeshv1.Task_TASK_TEXT,
		Binding: binding,
		Inputs: []*genmeshv1.InputItem{{
			Kind:    genmeshv1.ContentKind_CONTENT_KIND_TEXT,
			Role:    genmeshv1.InputRole_INPUT_ROLE_USER_PROMPT,
			Payload: &genmeshv1.InputItem_Text{Text: prompt},
		}},
		Parameters: &genmeshv1.GenerateRequest_Text{Text: &genmeshv1.TextParameters{MaxTokens: proto.Int32(maxTokens)}},
	}
}

func run(address, key string, request *genmeshv1.GenerateRequest, asJSON bool) error {
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := genmeshv1.NewGenerationServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The key travels as metadata on every call; `authorization: Bearer <key>` works as well.
	ctx = metadata.AppendToOutgoingContext(ctx, "x-api-key", key)

	response, err := client.Generate(ctx, request)
	if err != nil {
		return fmt.Errorf("Generate: %w", err)
	}
	if !asJSON {
		fmt.Printf("generate: %s\n(%s, %d tokens)\nstream:   ", text(response), response.GetFinishReason(), response.GetUsage().GetTotalTokens())
	}

	stream, err := client.GenerateStream(ctx, &genmeshv1.GenerateStreamRequest{Request: request})
	if err != nil {
		return fmt.Errorf("GenerateStream: %w", err)
	}
	var streamed strings.Builder
	var final *genmeshv1.GenerateResponse
	for {
		message, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("GenerateStream: %w", err)
		}
		switch event := message.GetEvent().GetEvent().(type) {
		case *genmeshv1.StreamEvent_TextDelta:
			streamed.WriteString(event.TextDelta.GetText())
			if !asJSON {
				fmt.Print(event.TextDelta.GetText())
			}
		case *genmeshv1.StreamEvent_Final:
			final = event.Final
		}
	}
	if !asJSON {
		fmt.Println()
		return nil
	}
	return printJSON(response, streamed.String(), final)
}

func text(response *genmeshv1.GenerateResponse) string {
	var parts []string
	for _, output := range response.GetOutputs() {
		parts = append(parts, output.GetText())
	}
	return strings.Join(parts, "")
}

func printJSON(response *genmeshv1.GenerateResponse, streamed string, final *genmeshv1.GenerateResponse) error {
	marshal := protojson.MarshalOptions{UseProtoNames: true}
	unary, err := marshal.Marshal(response)
	if err != nil {
		return err
	}
	last, err := marshal.Marshal(final)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"generate":     json.RawMessage(unary),
		"stream_text":  streamed,
		"stream_final": json.RawMessage(last),
	})
}
