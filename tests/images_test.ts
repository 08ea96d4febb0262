import assert from "node:assert/strict";
import { loadImages, MAX_IMAGE_BYTES } from "../src/server/images.ts";
import { BridgeError } from "../src/util/errors.ts";

/** A 1×1 transparent PNG. */
const PNG_BASE64 =
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
const PNG = Uint8Array.from(atob(PNG_BASE64), (c) => c.charCodeAt(0));

/** Two temp dirs: `root` (allowed, holds tiny.png) and `outside` (holds secret.png). */
async function withDirs(fn: (d: { root: string; outside: string }) => Promise<void>) {
  const root = await Deno.makeTempDir({ prefix: "lmbridge-images-root-" });
  const outside = await Deno.makeTempDir({ prefix: "lmbridge-images-outside-" });
  try {
    await Deno.writeFile(`${root}/tiny.png`, PNG);
    await Deno.writeFile(`${outside}/secret.png`, PNG);
    await fn({ root, outside });
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(outside, { recursive: true });
  }
}

/** Expects loadImages to fail with invalid_request whose message matches `pattern`. */
async function assertRefused(
  images: string[],
  options: Parameters<typeof loadImages>[1],
  pattern: RegExp,
) {
  await assert.rejects(() => loadImages(images, options), (err: unknown) => {
    assert.ok(err instanceof BridgeError, String(err));
    assert.equal(err.code, "invalid_request");
    assert.match(err.message, pattern);
    assert.match(err.message, /^images\.\d+: /, "names the entry");
    assert.ok(err.hint, "has a hint");
    return true;
  });
}

const NO_ROOTS = { roots: [] as string[], allowRemote: false };

// --- data URLs ---

Deno.test("a base64 data URL of an accepted type passes unchanged", async () => {
  for (const type of ["image/png", "image/jpeg", "image/gif", "image/webp"]) {
    const url = `data:${type};base64,${PNG_BASE64}`;
    assert.deepEqual(await loadImages([url], NO_ROOTS), [url]);
  }
});

Deno.test("a data URL of another type is refused", async () => {
  await assertRefused(
    [`data:image/svg+xml;base64,${btoa("<svg/>")}`],
    NO_ROOTS,
    /image\/svg\+xml is not png, jpeg, gif or webp/,
  );
  await assertRefused([`data:text/plain;base64,${btoa("hi")}`], NO_ROOTS, /text\/plain/);
});

Deno.test("a data URL that is not base64 is refused", async () => {
  await assertRefused(["data:image/png,rawbytes"], NO_ROOTS, /not a base64 data URL/);
  await assertRefused(["data:image/png;base64,@@not base64!!"], NO_ROOTS, /not a base64/);
  await assertRefused(["data:;base64,AAAA"], NO_ROOTS, /not a base64/);
});

Deno.test("a data URL over 10 MB is refused", async () => {
  const big = "A".repeat(Math.ceil((MAX_IMAGE_BYTES + 1024) / 3) * 4);
  await assertRefused([`data:image/png;base64,${big}`], NO_ROOTS, /larger than 10 MB/);
});

Deno.test("the failing entry is named by its position", async () => {
  const ok = `data:image/png;base64,${PNG_BASE64}`;
  await assertRefused([ok, ok, "data:image/bmp;base64,AAAA"], NO_ROOTS, /^images\.2: /);
});

// --- files ---

Deno.test("a png file inside the allowed root becomes a data URL", async () => {
  await withDirs(async ({ root }) => {
    const [url] = await loadImages([`${root}/tiny.png`], { roots: [root], allowRemote: false });
    assert.equal(url, `data:image/png;base64,${PNG_BASE64}`);
  });
});

Deno.test("the file's extension decides its type (jpg, JPEG, gif, webp)", async () => {
  await withDirs(async ({ root }) => {
    const cases = { "a.jpg": "image/jpeg", "b.JPEG": "image/jpeg", "c.gif": "image/gif" };
    for (const [name, type] of Object.entries({ ...cases, "d.webp": "image/webp" })) {
      await Deno.writeFile(`${root}/${name}`, PNG);
      const [url] = await loadImages([`${root}/${name}`], { roots: [root], allowRemote: false });
      assert.ok(url.startsWith(`data:${type};base64,`), `${name} → ${url.slice(0, 30)}`);
    }
  });
});

Deno.test("several images load together, in order", async () => {
  await withDirs(async ({ root }) => {
    const data = `data:image/gif;base64,${PNG_BASE64}`;
    const urls = await loadImages([`${root}/tiny.png`, data], {
      roots: [root],
      allowRemote: false,
    });
    assert.deepEqual(urls, [`data:image/png;base64,${PNG_BASE64}`, data]);
  });
});

Deno.test("a file outside the allowed roots is refused", async () => {
  await withDirs(async ({ root, outside }) => {
    await assertRefused(
      [`${outside}/secret.png`],
      { roots: [root], allowRemote: false },
      /outside the allowed image roots/,
    );
  });
});

Deno.test("a .. traversal out of the root is refused", async () => {
  await withDirs(async ({ root, outside }) => {
    const name = outside.split("/").pop();
    await assertRefused(
      [`${root}/../${name}/secret.png`],
      { roots: [root], allowRemote: false },
      /outside the allowed image roots/,
    );
  });
});

Deno.test("a sibling directory sharing the root's name prefix is outside it", async () => {
  await withDirs(async ({ root }) => {
    const sibling = `${root}-evil`;
    await Deno.mkdir(sibling);
    try {
      await Deno.writeFile(`${sibling}/x.png`, PNG);
      await assertRefused(
        [`${sibling}/x.png`],
        { roots: [root], allowRemote: false },
        /outside the allowed image roots/,
      );
    } finally {
      await Deno.remove(sibling, { recursive: true });
    }
  });
});

Deno.test("a symlink inside the root that points outside it is refused", async () => {
  await withDirs(async ({ root, outside }) => {
    await Deno.symlink(`${outside}/secret.png`, `${root}/link.png`);
    await assertRefused(
      [`${root}/link.png`],
      { roots: [root], allowRemote: false },
      /outside the allowed image roots/,
    );
  });
});

Deno.test("a file over 10 MB is refused", async () => {
  await withDirs(async ({ root }) => {
    const path = `${root}/huge.png`;
    await Deno.writeFile(path, new Uint8Array());
    await Deno.truncate(path, MAX_IMAGE_BYTES + 1); // sparse: no 10 MB written
    await assertRefused([path], { roots: [root], allowRemote: false }, /larger than 10 MB/);
  });
});

Deno.test("a file of another type is refused by its extension", async () => {
  await withDirs(async ({ root }) => {
    for (const name of ["pic.bmp", "pic.svg", "notes.txt", "noext"]) {
      await Deno.writeFile(`${root}/${name}`, PNG);
      await assertRefused(
        [`${root}/${name}`],
        { roots: [root], allowRemote: false },
        /only png, jpeg, gif and webp/,
      );
    }
  });
});

Deno.test("a missing file or a directory is refused", async () => {
  await withDirs(async ({ root }) => {
    await assertRefused(
      [`${root}/missing.png`],
      { roots: [root], allowRemote: false },
      /file not found/,
    );
    await Deno.mkdir(`${root}/dir.png`);
    await assertRefused([`${root}/dir.png`], { roots: [root], allowRemote: false }, /not a file/);
  });
});

// --- remote URLs ---

Deno.test("a remote URL is refused by default, without fetching it", async () => {
  let fetched = false;
  const fakeFetch = (() => {
    fetched = true;
    return Promise.resolve(new Response(PNG, { headers: { "content-type": "image/png" } }));
  }) as typeof fetch;
  for (const url of ["https://example.com/cat.png", "http://example.com/cat.png"]) {
    await assertRefused(
      [url],
      { roots: [], allowRemote: false, fetch: fakeFetch },
      /remote image URLs are off/,
    );
  }
  assert.equal(fetched, false);
});

Deno.test("a remote URL, when enabled, is fetched and turned into a data URL", async () => {
  const seen: string[] = [];
  const fakeFetch = ((input: string | URL | Request) => {
    seen.push(String(input));
    return Promise.resolve(
      new Response(PNG, { headers: { "content-type": "image/png; charset=binary" } }),
    );
  }) as typeof fetch;
  const urls = await loadImages(["https://example.com/cat.png"], {
    roots: [],
    allowRemote: true,
    fetch: fakeFetch,
  });
  assert.deepEqual(urls, [`data:image/png;base64,${PNG_BASE64}`]);
  assert.deepEqual(seen, ["https://example.com/cat.png"]);
});

Deno.test("an enabled remote URL of another type or a failed fetch is refused", async () => {
  const htmlFetch = (() =>
    Promise.resolve(
      new Response("<html>", { headers: { "content-type": "text/html" } }),
    )) as typeof fetch;
  await assertRefused(
    ["https://example.com/page"],
    { roots: [], allowRemote: true, fetch: htmlFetch },
    /text\/html is not png/,
  );
  const missing = (() => Promise.resolve(new Response("nope", { status: 404 }))) as typeof fetch;
  await assertRefused(
    ["https://example.com/gone.png"],
    { roots: [], allowRemote: true, fetch: missing },
    /answered 404/,
  );
});

Deno.test("over real HTTP, a 404 or an HTML page is refused and the server stops cleanly", async () => {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (req) =>
      new URL(req.url).pathname === "/gone.png"
        ? new Response("x".repeat(100_000), { status: 404 })
        : new Response("<html>".repeat(20_000), { headers: { "content-type": "text/html" } }),
  );
  try {
    const base = `http://127.0.0.1:${server.addr.port}`;
    const options = { roots: [], allowRemote: true };
    await assertRefused([`${base}/gone.png`], options, /answered 404/);
    await assertRefused([`${base}/page`], options, /text\/html/);
  } finally {
    await server.shutdown();
  }
});

Deno.test("an enabled remote image over 10 MB is refused without downloading all of it", async () => {
  let pulled = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      pulled++;
      if (pulled > 40) controller.close();
      else controller.enqueue(new Uint8Array(1024 * 1024));
    },
  });
  const fakeFetch = () =>
    Promise.resolve(new Response(body, { headers: { "content-type": "image/png" } }));
  await assert.rejects(
    loadImages(["https://example.com/huge.png"], {
      roots: [],
      allowRemote: true,
      fetch: fakeFetch as typeof fetch,
    }),
    /larger than 10 MB/,
  );
  assert.ok(pulled <= 13, `${pulled} MB pulled`);
});
