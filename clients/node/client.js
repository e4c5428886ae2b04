// A small genmesh client for Node: the services are loaded from the .proto files at run time by
// @grpc/proto-loader, so there is no generated code to keep in step with the protos.
import path from "node:path";
import { fileURLToPath } from "node:url";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Where the protos live: genmesh's own, and the googleapis ones `make proto` copies out. */
export const DEFAULT_INCLUDE_DIRS = [path.join(root, "protos"), path.join(root, ".cache/protodeps")];

/**
 * Field names stay snake_case as in the protos, enums are their names, 64-bit integers and bytes are
 * strings (decimal and base64, as in proto3 JSON), and unset fields take their defaults.
 */
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, bytes: String, defaults: true, oneofs: true };

/** A text generation request for `prompt`. */
export function textRequest(prompt, { binding = "", maxTokens = 64 } = {}) {
  return {
    task: "TASK_TEXT",
    binding,
    inputs: [{ kind: "CONTENT_KIND_TEXT", role: "INPUT_ROLE_USER_PROMPT", text: prompt }],
    text: { max_tokens: maxTokens },
  };
}

/** Connects to the router; every call carries the API key as `x-api-key` metadata. */
export function connect({
  address = "127.0.0.1:50051",
  apiKey = process.env.GENMESH_API_KEY,
  credentials = grpc.credentials.createInsecure(),
  includeDirs = DEFAULT_INCLUDE_DIRS,
} = {}) {
  const definition = protoLoader.loadSync(
    ["genmesh/v1/generation.proto", "genmesh/v1/catalog.proto"],
    { ...LOADER_OPTIONS, includeDirs },
  );
  const { genmesh } = grpc.loadPackageDefinition(definition);
  const generation = new genmesh.v1.GenerationService(address, credentials);
  const catalog = new genmesh.v1.CatalogService(address, credentials, { channelOverride: generation.getChannel() });
  const metadata = () => {
    const md = new grpc.Metadata();
    if (apiKey) md.set("x-api-key", apiKey);
    return md;
  };
  const unary = (stub, method) => (request, deadlineSeconds = 120) =>
    new Promise((resolve, reject) => {
      stub[method](request, metadata(), { deadline: Date.now() + deadlineSeconds * 1000 }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });

  return {
    /** Generate: the complete GenerateResponse. */
    generate: unary(generation, "Generate"),
    /** GenerateStream: an async iterable of StreamEvents; the last one holds `final`. */
    async *generateStream(request, deadlineSeconds = 120) {
      const call = generation.GenerateStream({ request }, metadata(), {
        deadline: Date.now() + deadlineSeconds * 1000,
      });
      for await (const message of call) yield message.event;
    },
    /** ListBindings: the configured bindings. */
    listBindings: async () => (await unary(catalog, "ListBindings")({})).bindings,
    close: () => generation.close(),
  };
}
