// The editor's client for the JSON API. A bearer token given as ?token=... in the page URL is kept in
// sessionStorage and sent with every call (EventSource cannot send headers, so it also goes in the query).

const TOKEN_KEY = "layercomposer.token";
const fromUrl = new URLSearchParams(location.search).get("token");
if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
const token = () => sessionStorage.getItem(TOKEN_KEY);

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function withToken(url) {
  const t = token();
  if (!t) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(t);
}

async function request(method, url, body, { raw = false } = {}) {
  const headers = {};
  if (token()) headers.Authorization = `Bearer ${token()}`;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(url, { method, headers, body: payload });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error || message;
    } catch { /* not JSON */ }
    throw new ApiError(response.status, message);
  }
  if (raw) return response;
  return response.json();
}

export const api = {
  health: () => request("GET", "/api/health"),
  uploadImage(blob, filename) {
    const form = new FormData();
    form.append("file", blob, filename);
    return request("POST", "/api/images", form);
  },
  /** Cut a subject out of a stored image: {mode: "person"} or {mode: "box", box: [x0, y0, x1, y1]} (image px). */
  cutout: (id, body) => request("POST", `/api/images/${id}/cutout`, body),
  tokens: (canvas) => request("POST", "/api/tokens", { canvas }),
  async bundle(canvas) {
    return (await request("POST", "/api/bundle", { canvas }, { raw: true })).blob();
  },
  openBundle(file) {
    const form = new FormData();
    form.append("bundle", file, file.name);
    return request("POST", "/api/open", form);
  },
  createJob: (canvas, settings) => request("POST", "/api/jobs", { canvas, settings }),
  jobs: () => request("GET", "/api/jobs"),
  job: (id) => request("GET", `/api/jobs/${id}`),
  jobCanvas: (id) => request("GET", `/api/jobs/${id}/canvas`),
  cancel: (id) => request("POST", `/api/jobs/${id}/cancel`),
  library: () => request("GET", "/api/library"),
  events: (id) => new EventSource(withToken(`/api/jobs/${id}/events`)),
  imageUrl: (id) => withToken(`/api/images/${id}`),
  resultUrl: (id) => withToken(`/api/jobs/${id}/result.png`),
};
