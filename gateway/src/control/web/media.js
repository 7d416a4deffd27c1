// The page's media: uploads to `POST /v1/media` (with their progress, which fetch cannot
// report, hence XMLHttpRequest) and downloads from `GET /v1/media/{hash}`. A download needs
// the Authorization header, so an <img> cannot load it by URL: the bytes are fetched here and
// shown through a blob: URL, kept by hash (the bytes of a hash never change) in a bounded
// cache whose oldest entries are revoked. It knows nothing of the DOM beyond that.

const CACHE_MAX = 200; // blob: URLs held; each pins its bytes in memory until revoked
// The right to read what a message names comes with the message's log record, milliseconds
// after the message itself may have reached this page: a 404 is asked again a few times.
const NOT_YET_RETRIES = 5;
const NOT_YET_FIRST_MS = 300;
export const MEDIA_BYTES_MAX = 64 * 1024 * 1024; // the server's default media_bytes_max

/** `{hash, mime, size, name}` as a message carries it, or null when it is not one. */
export function mediaOf(value) {
  if (!value || typeof value.hash !== "string" || !/^[0-9a-f]{64}$/.test(value.hash)) return null;
  const media = { hash: value.hash, mime: String(value.mime ?? ""), size: Number(value.size) || 0 };
  if (typeof value.name === "string" && value.name !== "") media.name = value.name;
  return media;
}

export function isImage(media) {
  return media.mime.startsWith("image/");
}

/** "48 KB", "1.2 MB". */
export function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class Media {
  /** `onLoaded(hash)` is called when a download the page asked for is ready (or failed). */
  constructor({ token, onLoaded }) {
    this.token = token;
    this.onLoaded = onLoaded;
    this.urls = new Map(); // hash -> blob: URL, oldest first
    this.loading = new Map(); // hash -> Promise<string|null>
    this.failed = new Set(); // hashes that could not be read; asked again on the next start
  }

  /** Uploads `file` (a File or Blob with its type) and resolves with `{hash, size, mime}`;
   * `progress(fraction)` follows the bytes sent. The file's bytes are cached under the
   * hash, so that the sender's own message shows without a download. */
  upload(file, progress = () => {}) {
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", "/v1/media");
      request.setRequestHeader("Authorization", `Bearer ${this.token}`);
      request.setRequestHeader("Content-Type", file.type || "application/octet-stream");
      request.responseType = "json";
      request.upload.onprogress = (event) => {
        if (event.lengthComputable) progress(event.loaded / event.total);
      };
      request.onload = () => {
        const answer = request.response;
        if (request.status !== 200 || !answer?.hash) {
          reject(new Error(answer?.message ?? `upload refused (${request.status})`));
          return;
        }
        if (!this.urls.has(answer.hash)) this.remember(answer.hash, URL.createObjectURL(file));
        resolve(answer);
      };
      request.onerror = () => reject(new Error("the server cannot be reached"));
      request.send(file);
    });
  }

  /** The blob: URL of `hash` if it is here; otherwise null, and it is fetched (once) and
   * `onLoaded` called when it is. */
  url(hash) {
    const url = this.urls.get(hash);
    if (url !== undefined) {
      // Most recently used last, so that eviction takes what was not shown for longest.
      this.urls.delete(hash);
      this.urls.set(hash, url);
      return url;
    }
    if (!this.loading.has(hash) && !this.failed.has(hash)) {
      const loading = this.fetch(hash).finally(() => {
        this.loading.delete(hash);
        this.onLoaded(hash);
      });
      this.loading.set(hash, loading);
    }
    return null;
  }

  /** Whether `hash` could not be read (it is gone, or this user may not read it). */
  unavailable(hash) {
    return this.failed.has(hash);
  }

  /** The blob: URL of `hash`, fetched if it must be; null when it cannot be read. */
  async load(hash) {
    return this.url(hash) ?? (await this.loading.get(hash)) ?? this.urls.get(hash) ?? null;
  }

  async fetch(hash) {
    let wait = NOT_YET_FIRST_MS;
    for (let attempt = 0; ; attempt++) {
      let answer;
      try {
        answer = await fetch(`/v1/media/${hash}`, {
          headers: { Authorization: `Bearer ${this.token}` },
        });
      } catch {
        answer = null; // offline: asked again, like a 404
      }
      if (answer?.ok) {
        const url = URL.createObjectURL(await answer.blob());
        this.remember(hash, url);
        return url;
      }
      if (attempt >= NOT_YET_RETRIES || (answer && answer.status !== 404)) {
        this.failed.add(hash);
        return null;
      }
      await sleep(wait);
      wait *= 2;
    }
  }

  remember(hash, url) {
    this.urls.set(hash, url);
    while (this.urls.size > CACHE_MAX) {
      const [oldest, oldUrl] = this.urls.entries().next().value;
      this.urls.delete(oldest);
      URL.revokeObjectURL(oldUrl);
    }
  }

  /** Forgets failures (after a reconnect the object may be readable now). */
  retryFailed() {
    this.failed.clear();
  }

  clear() {
    for (const url of this.urls.values()) URL.revokeObjectURL(url);
    this.urls.clear();
  }
}
