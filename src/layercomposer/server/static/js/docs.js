// The API reference, rendered from /openapi.json with nothing but this file (no CDN: works offline).

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function schemaName(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return `${schemaName(schema.items)}[]`;
  return schema.type || "";
}

async function main() {
  let spec;
  try {
    spec = await (await fetch("/openapi.json")).json();
  } catch (err) {
    $("docs-status").textContent = `cannot read /openapi.json: ${err.message}`;
    return;
  }
  $("docs-status").textContent = `${spec.info.title} ${spec.info.version}: ${spec.info.description || ""}`;
  const routes = $("routes");
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const section = el("section", undefined, "route");
      section.append(el("h2", `${method.toUpperCase()} ${path}`));
      if (op.summary) section.append(el("p", op.summary, "summary"));
      if (op.description) section.append(el("pre", op.description, "description"));
      const params = (op.parameters || []).map((p) => `${p.name} (${p.in}${p.required ? ", required" : ""})`);
      if (params.length) section.append(el("p", `parameters: ${params.join(", ")}`));
      const body = op.requestBody && op.requestBody.content;
      if (body) {
        const kinds = Object.entries(body).map(([kind, v]) => `${kind} ${schemaName(v.schema)}`.trim());
        section.append(el("p", `body: ${kinds.join("; ")}`));
      }
      const answers = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`);
      if (answers.length) section.append(el("p", `answers: ${answers.join("; ")}`));
      routes.append(section);
    }
  }
  const schemas = (spec.components && spec.components.schemas) || {};
  if (Object.keys(schemas).length) {
    routes.append(el("h2", "Schemas"));
    for (const [name, schema] of Object.entries(schemas)) {
      const section = el("section", undefined, "route");
      section.append(el("h3", name));
      const fields = Object.entries(schema.properties || {}).map(
        ([field, s]) => `${field}: ${schemaName(s) || (s.anyOf || []).map(schemaName).join(" | ")}`);
      section.append(el("pre", fields.join("\n") || schema.description || ""));
      routes.append(section);
    }
  }
}

main();
