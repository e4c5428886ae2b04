// The mesh's catalog as /api/catalog answers it, fetched once per key and shared by the tabs.
import { writable } from "svelte/store";
import { getJson, message, type ApiError } from "./api";

export interface Binding {
  name: string;
  tasks: string[];
  engine: string;
  model: string;
  description: string;
  replicas: number;
  healthy_replicas: number;
  is_default: boolean;
}

export interface ModelInfo {
  name: string;
  binding: string;
  kind: string;
  tasks: string[];
  voices: string[];
  loaded: boolean;
  context_size: number;
}

export interface Personality {
  name: string;
  description: string;
  category: string;
}

export interface FunctionInfo {
  name: string;
  description: string;
  signature: string;
}

export interface Catalog {
  bindings: Binding[];
  personalities: Personality[];
  functions: FunctionInfo[];
  models: ModelInfo[];
}

export const catalog = writable<Catalog | null>(null);
export const catalogError = writable<ApiError | null>(null);

export async function loadCatalog(): Promise<void> {
  try {
    catalog.set(await getJson<Catalog>("/api/catalog"));
    catalogError.set(null);
  } catch (error) {
    catalog.set(null);
    catalogError.set(message(error));
  }
}

export function bindingsFor(found: Catalog | null, task: string): Binding[] {
  return (found?.bindings ?? []).filter((b) => b.tasks.includes(task));
}

export function modelsOf(found: Catalog | null, binding: string): ModelInfo[] {
  return (found?.models ?? []).filter((m) => m.binding === binding);
}
