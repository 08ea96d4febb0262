/**
 * Model name matching (SPEC §3): exact id, id ignoring case, the part after `publisher/`,
 * then a unique prefix or suffix; LM Studio's `@quant` and `:N` instance suffixes ignored.
 * A miss names the closest ids.
 */
import { BridgeError } from "../util/errors.ts";

/** `qwen/qwen3-4b@q4_k_m:2` → `qwen/qwen3-4b` (lower case). */
export function baseModelId(id: string): string {
  return id.toLowerCase().replace(/:\d+$/, "").replace(/@[\w.\-]+$/, "");
}

/** The part after `publisher/`, lower case, suffixes stripped. */
function shortName(id: string): string {
  const base = baseModelId(id);
  const slash = base.lastIndexOf("/");
  return slash >= 0 ? base.slice(slash + 1) : base;
}

/** True when two ids name the same model (used to check the answer's `model`). */
export function sameModel(a: string, b: string): boolean {
  return baseModelId(a) === baseModelId(b) || shortName(a) === shortName(b);
}

/**
 * Finds the one id `query` names among `ids`.
 *
 * @throws BridgeError `model_not_found` naming the closest ids, or the candidates when ambiguous.
 * @example
 * matchModelId("qwen3-4b", ["qwen/qwen3-4b", "google/gemma-3-4b"]); // "qwen/qwen3-4b"
 */
export function matchModelId(query: string, ids: readonly string[]): string {
  const q = query.trim();
  if (ids.includes(q)) return q;
  const ql = q.toLowerCase();
  const qBase = baseModelId(q);
  const rules: ((id: string) => boolean)[] = [
    (id) => id.toLowerCase() === ql,
    (id) => baseModelId(id) === qBase,
    (id) => shortName(id) === qBase,
    (id) => baseModelId(id).startsWith(qBase) || shortName(id).startsWith(qBase),
    (id) => baseModelId(id).endsWith(qBase),
  ];
  for (const rule of rules) {
    const hits = [...new Set(ids.filter(rule))];
    if (hits.length === 1) return hits[0];
    if (hits.length > 1) {
      // Several loaded copies (`:2`) or quantizations of one model are one model.
      const bases = new Set(hits.map(baseModelId));
      if (bases.size === 1) return hits.sort((a, b) => a.length - b.length)[0];
      throw new BridgeError(
        "model_not_found",
        `"${query}" matches several models: ${hits.slice(0, 8).join(", ")}`,
        {
          hint: `name one of them exactly, e.g. ${hits[0]}`,
          details: { candidates: hits },
        },
      );
    }
  }
  const suggestions = closestIds(q, ids);
  throw new BridgeError("model_not_found", `no model named "${query}"`, {
    hint: suggestions.length
      ? `did you mean ${suggestions.join(" or ")}? (list_models shows every id)`
      : ids.length
      ? `list_models shows the ${ids.length} ids available`
      : "no models are available; download one in LM Studio or check the backend URL",
    details: { suggestions },
  });
}

/** The `count` ids closest to `query` by edit distance on their short names. */
export function closestIds(query: string, ids: readonly string[], count = 3): string[] {
  const q = baseModelId(query);
  return [...new Set(ids)]
    .map((id) => ({
      id,
      d: Math.min(editDistance(q, baseModelId(id)), editDistance(q, shortName(id))),
    }))
    .filter((x) => x.d <= Math.max(3, Math.ceil(q.length * 0.6)))
    .sort((a, b) => a.d - b.d || a.id.localeCompare(b.id))
    .slice(0, count)
    .map((x) => x.id);
}

/** Levenshtein distance, O(n·m) time, O(m) memory. */
export function editDistance(a: string, b: string): number {
  if (a === b) return 0;
  let prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(
        prev[j] + 1,
        cur[j - 1] + 1,
        prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    prev = cur;
  }
  return prev[b.length];
}
