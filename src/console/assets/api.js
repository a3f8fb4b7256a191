// The operator API, called with the operator's bearer token. The token lives in this tab's
// session storage only: never in a URL, a cookie or local storage, so it leaves with the tab.

const KEY = "sever.operator-token";

/** The longest one API call may take (longer than sever's own request timeout). */
const TIMEOUT_MS = 60_000;

/** The token signed in with, or null. */
export function token() {
  return sessionStorage.getItem(KEY);
}

/** Keeps the token for this tab. */
export function signIn(value) {
  sessionStorage.setItem(KEY, value);
}

/** Forgets the token. */
export function signOut() {
  sessionStorage.removeItem(KEY);
}

/** A refused or failed request: the HTTP status and the API's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let unauthorized = () => {};

/** What to do when the API refuses the token (sign out, show the sign-in form). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** Calls the API; resolves with `{status, data}` or rejects with an ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${token() ?? ""}` };
  // A server that stops answering fails the call instead of freezing the page's refresh.
  const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error", signal: AbortSignal.timeout(TIMEOUT_MS) };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "unreachable", `sever did not answer: ${e.message}`);
  }
  const raw = await response.text();
  let data = null;
  try {
    data = raw ? JSON.parse(raw) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    if (response.status === 401) unauthorized();
    throw new ApiError(response.status, error.code ?? `http_${response.status}`, error.message ?? raw.slice(0, 300));
  }
  return { status: response.status, data };
}

/** Fetches a file from the API with the token and hands it to the browser as a download. */
export async function download(path, filename) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${token() ?? ""}` },
    cache: "no-store",
    credentials: "omit",
    redirect: "error",
  });
  if (!response.ok) {
    if (response.status === 401) unauthorized();
    throw new ApiError(response.status, `http_${response.status}`, (await response.text()).slice(0, 300));
  }
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/** A query string from an object, leaving out empty values; arrays repeat their key. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) q.append(key, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}
