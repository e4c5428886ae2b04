// The page's only way to the mesh: the edge's own origin, with the key typed once and kept in
// localStorage. Every failure becomes an ApiError with the gRPC status and its details.
import { EventSourceParserStream } from "eventsource-parser/stream";

const KEY = "genmesh.apiKey";

export function apiKey(): string {
  return localStorage.getItem(KEY) ?? "";
}

export function setApiKey(key: string): void {
  localStorage.setItem(KEY, key.trim());
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }

  // What the page shows: the gRPC status (or HTTP status) and the message, then any details.
  get summary(): string {
    return `${this.code || `HTTP ${this.status}`}: ${this.message}`;
  }
}

// Both shapes of error body the edge answers: /api's (gRPC status) and the OpenAI routes'.
export function errorFrom(status: number, body: unknown): ApiError {
  const error = (body as { error?: Record<string, unknown> } | null)?.error;
  if (!error) return new ApiError(status, `the edge answered ${status} without a reason`, "");
  const { message, code, status: _, ...details } = error;
  const name = typeof code === "string" ? code : "";
  return new ApiError(status, String(message ?? ""), name, details);
}

function headers(json: boolean): Record<string, string> {
  const sent: Record<string, string> = { Authorization: `Bearer ${apiKey()}` };
  if (json) sent["Content-Type"] = "application/json";
  return sent;
}

async function send(path: string, init: RequestInit): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    if ((error as Error).name === "AbortError") throw error;
    throw new ApiError(0, `the edge could not be reached (${(error as Error).message})`, "NETWORK");
  }
  if (!response.ok) {
    const text = await response.text();
    let body: unknown = null;
    try {
      body = JSON.parse(text);
    } catch {
      throw new ApiError(response.status, text || response.statusText, "");
    }
    throw errorFrom(response.status, body);
  }
  return response;
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await send(path, { headers: headers(false), signal });
  return (await response.json()) as T;
}

export async function postJson<T>(path: string, body: unknown, signal?: AbortSignal): Promise<T> {
  const init = { method: "POST", headers: headers(true), body: JSON.stringify(body), signal };
  return (await (await send(path, init)).json()) as T;
}

export async function postForm(path: string, form: FormData, signal?: AbortSignal): Promise<Response> {
  return send(path, { method: "POST", headers: headers(false), body: form, signal });
}

// An SSE stream's JSON events; aborting `signal` closes the connection, which cancels the
// generation in the mesh. An `error` event (or an OpenAI-style error chunk) is thrown.
export async function* stream<T>(path: string, body: unknown, signal: AbortSignal): AsyncGenerator<T> {
  const init = { method: "POST", headers: headers(true), body: JSON.stringify(body), signal };
  const response = await send(path, init);
  if (!response.body) throw new ApiError(response.status, "the stream had no body", "");
  const events = response.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
  for await (const event of events) {
    if (event.data === "[DONE]") return;
    const data = JSON.parse(event.data);
    if (event.event === "error" || (data && typeof data === "object" && "error" in data)) {
      throw errorFrom(500, data);
    }
    yield data as T;
  }
}

// Protobuf's JSON mapping of a Duration ("1.5s") in seconds.
export function seconds(duration: string | undefined): number {
  return duration ? Number.parseFloat(duration) : 0;
}

export function base64ToBlob(data: string, type: string): Blob {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type });
}

export async function blobToBase64(blob: Blob): Promise<string> {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

export function message(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  return new ApiError(0, (error as Error)?.message ?? String(error), "ERROR");
}
