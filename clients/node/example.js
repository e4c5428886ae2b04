#!/usr/bin/env node
// Calls Generate, then GenerateStream printing text as it arrives. With --json it prints one JSON
// object instead: the unary response, the streamed text and the stream's final response.
import { parseArgs } from "node:util";
import { connect, textRequest } from "./client.js";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    address: { type: "string", default: "127.0.0.1:50051" },
    key: { type: "string", default: process.env.GENMESH_API_KEY },
    binding: { type: "string", default: "" },
    "max-tokens": { type: "string", default: "64" },
    json: { type: "boolean", default: false },
  },
});
const prompt = positionals.join(" ");
if (!prompt) {
  console.error("usage: example.js [--address A] [--key K] [--binding B] [--max-tokens N] [--json] PROMPT");
  process.exit(2);
}

const client = connect({ address: values.address, apiKey: values.key });
const request = textRequest(prompt, { binding: values.binding, maxTokens: Number(values["max-tokens"]) });
try {
  const response = await client.generate(request);
  const text = response.outputs.map((output) => output.text).join("");
  if (!values.json) process.stdout.write(`generate: ${text}\n(${response.finish_reason}, ${response.usage.total_tokens} tokens)\nstream:   `);
  let streamed = "";
  let final = null;
  for await (const event of client.generateStream(request)) {
    if (event.event === "text_delta") {
      streamed += event.text_delta.text;
      if (!values.json) process.stdout.write(event.text_delta.text);
    } else if (event.event === "final") {
      final = event.final;
    }
  }
  console.log(values.json ? JSON.stringify({ generate: response, stream_text: streamed, stream_final: final }) : "");
} catch (error) {
  console.error(`error: ${error.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
