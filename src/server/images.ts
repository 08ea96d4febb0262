/**
 * `images` arguments → base64 data URLs (the only form model servers accept): data URLs are
 * checked, files must lie inside the allowed roots (after resolving symlinks), remote URLs
 * only when enabled. Over 10 MB or not png / jpeg / gif / webp → `invalid_request`.
 */
import { concatBytes } from "../util/bytes.ts";
import { BridgeError } from "../util/errors.ts";

export const MAX_IMAGE_BYTES = 10 * 1024 * 1024;
const TYPES: Record<string, string> = {
  png: "image/png",
  jpg: "image/jpeg",
  jpeg: "image/jpeg",
  gif: "image/gif",
  webp: "image/webp",
};
const MIME = new Set(Object.values(TYPES));

export interface ImageOptions {
  roots: readonly string[];
  allowRemote: boolean;
  signal?: AbortSignal;
  fetch?: typeof fetch;
}

/** Turns each entry into a data URL, or throws `invalid_request` naming the entry. */
export async function loadImages(
  images: readonly string[],
  options: ImageOptions,
): Promise<string[]> {
  return await Promise.all(images.map((img, i) => loadImage(img, `images.${i}`, options)));
}

async function loadImage(image: string, field: string, options: ImageOptions): Promise<string> {
  const bad = (problem: string) =>
    new BridgeError("invalid_request", `${field}: ${problem}`, {
      hint:
        "pass a data:image/...;base64 URL or a png/jpeg/gif/webp file inside the working directory",
    });
  if (image.startsWith("data:")) {
    const m = /^data:([\w/+.-]+);base64,([A-Za-z0-9+/=\s]*)$/.exec(image);
    if (!m) throw bad("not a base64 data URL");
    if (!MIME.has(m[1])) throw bad(`type ${m[1]} is not png, jpeg, gif or webp`);
    if (m[2].length * 0.75 > MAX_IMAGE_BYTES) throw bad("larger than 10 MB");
    return image;
  }
  if (/^https?:\/\//i.test(image)) {
    if (!options.allowRemote) {
      throw bad("remote image URLs are off (set LMBRIDGE_ALLOW_REMOTE_IMAGES=true to allow them)");
    }
    const res = await (options.fetch ?? fetch)(image, { signal: options.signal });
    if (!res.ok) {
      await res.body?.cancel(); // free the connection
      throw bad(`fetching it answered ${res.status}`);
    }
    const type = (res.headers.get("content-type") ?? "").split(";")[0].trim();
    if (!MIME.has(type)) {
      await res.body?.cancel();
      throw bad(`type ${type || "unknown"} is not png, jpeg, gif or webp`);
    }
    const bytes = await readAtMost(res, MAX_IMAGE_BYTES);
    if (!bytes) throw bad("larger than 10 MB");
    return `data:${type};base64,${toBase64(bytes)}`;
  }
  if (image.includes("\0")) throw bad("contains a NUL byte");
  const ext = image.split(".").pop()?.toLowerCase() ?? "";
  const type = TYPES[ext];
  if (!type) throw bad("only png, jpeg, gif and webp files are accepted");
  let real: string;
  try {
    const absolute = image.startsWith("/") ? image : `${Deno.cwd()}/${image}`;
    real = await Deno.realPath(absolute);
  } catch {
    throw bad("file not found");
  }
  const roots = await Promise.all(
    options.roots.map((r) => Deno.realPath(r).catch(() => r)),
  );
  if (!roots.some((root) => real === root || real.startsWith(root.replace(/\/+$/, "") + "/"))) {
    throw bad("outside the allowed image roots (LMBRIDGE_IMAGE_ROOTS)");
  }
  const info = await Deno.stat(real);
  if (!info.isFile) throw bad("not a file");
  if (info.size > MAX_IMAGE_BYTES) throw bad("larger than 10 MB");
  return `data:${type};base64,${toBase64(await Deno.readFile(real))}`;
}

/** The body, or undefined (and the download stopped) as soon as it passes `limit` bytes. */
async function readAtMost(res: Response, limit: number): Promise<Uint8Array | undefined> {
  if (Number(res.headers.get("content-length") ?? 0) > limit) {
    await res.body?.cancel();
    return undefined;
  }
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const part of res.body ?? new ReadableStream<Uint8Array>()) {
    size += part.length;
    if (size > limit) {
      // Leaving the loop early cancels the body: nothing more is downloaded.
      return undefined;
    }
    parts.push(part);
  }
  return concatBytes(parts);
}

function toBase64(bytes: Uint8Array): string {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}
