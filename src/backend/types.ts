/** Shapes shared by the backend client, the catalogue and the router. */

export type BackendKind = "lmstudio" | "ollama" | "llamacpp" | "openai";
export type ModelType = "llm" | "vlm" | "embedding";

/** One model as a backend describes it, normalised across server kinds. */
export interface ModelInfo {
  id: string;
  type: ModelType;
  loaded: boolean;
  /** Base URL of the backend that serves it. */
  backend: string;
  contextLength?: number;
  capabilities: { toolUse: boolean; vision: boolean; reasoning: boolean };
  /** Parallel predictions of the loaded instance (LM Studio 0.4+), when known. */
  parallel?: number;
  /** Loaded instance ids (LM Studio native API), for unloading. */
  instanceIds: string[];
}

export type ContentPart =
  | { type: "text"; text: string }
  | { type: "image_url"; image_url: { url: string } };

export interface ToolCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface ChatMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string | ContentPart[] | null;
  tool_calls?: ToolCall[];
  tool_call_id?: string;
  name?: string;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
}

/** The end result of one generation (chat or completion). */
export interface GenerationResult {
  text: string;
  reasoning: string;
  toolCalls: ToolCall[];
  finishReason: string;
  usage: Usage;
  /** The `model` the server says answered (may differ from the one asked for). */
  model?: string;
  firstTokenMs?: number;
  totalMs: number;
}

/** Callbacks while a generation streams. */
export interface StreamHandlers {
  onText?: (delta: string) => void;
  onReasoning?: (delta: string) => void;
  /** A tool call fragment arrived (name known); used for agent progress. */
  onToolCall?: (index: number, name: string) => void;
}

/** What every upstream call takes: the caller's cancellation. */
export interface CallOptions extends StreamHandlers {
  signal?: AbortSignal;
}
