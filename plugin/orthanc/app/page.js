// The ProgEmu request page of a study (page.html, served by progemu_orthanc.py at /progemu/app/studies/{id}).
//
// The radiologist types a hypothesis ("the left pleural effusion worsens") or picks a suggestion, submits it
// to the plugin's /progemu routes (which hold the node's token), and the page follows the request every second
// until it is done: then it shows the report page (Orthanc's rendering of the instance), the interpretation,
// the consistency check and links to the study in the configured viewers. Everything the node or the user
// wrote is inserted as text, never as HTML.
(function () {
  'use strict';

  const STUDY = (/\/app\/studies\/([0-9a-f-]+)$/.exec(window.location.pathname) || [])[1];
  const API = new URL('../../', window.location.href);    // /progemu/
  const ROOT = new URL('../../../', window.location.href); // Orthanc's own root
  const STATES = ['queued', 'receiving', 'running', 'delivering', 'done'];
  const NOTICE = 'Synthetic images \u2014 not for diagnosis';
  // a done job whose outputs Orthanc has not indexed yet is asked again, this many times
  const LOOKUP_RETRIES = 10;
  let followed = null; // {id, timer, retries}

  const byId = (id) => document.getElementById(id);

  function el(tag, attributes, text) {
    const node = document.createElement(tag);
    Object.entries(attributes || {}).forEach(([name, value]) => node.setAttribute(name, value));
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function errorText(status, answer) {
    const detail = answer && answer.detail;
    if (typeof detail === 'string' && detail) {
      return detail.charAt(0).toUpperCase() + detail.slice(1) + '.';
    }
    switch (status) {
      case 0: return 'Orthanc did not answer: check the connection.';
      case 400: return 'The request was refused: check the hypothesis, seed and guidance scale.';
      case 404: return 'Not found: the study or the request no longer exists.';
      case 502: return 'The ProgEmu node is not reachable: ask IT to check it.';
      default: return 'The request failed (HTTP ' + status + ').';
    }
  }

  // a call to the plugin; a failure throws an Error with the status and a sentence for the user
  async function call(method, path, body) {
    const init = {method: method, cache: 'no-store', credentials: 'same-origin', headers: {Accept: 'application/json'}};
    if (body !== undefined) {
      // the plugin refuses a POST without both: what keeps another site's form from submitting as the user
      init.headers['Content-Type'] = 'application/json';
      init.headers['X-Requested-With'] = 'progemu';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(new URL(path, API), init);
    } catch (e) {
      throw Object.assign(new Error(errorText(0, null)), {status: 0});
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (e) {
      answer = null;
    }
    if (!response.ok) {
      throw Object.assign(new Error(errorText(response.status, answer)), {status: response.status});
    }
    return answer;
  }

  function showError(message) {
    byId('progemu-error').textContent = message || '';
    byId('progemu-error').hidden = !message;
  }

  // --- settings ------------------------------------------------------------------------------------

  function applyConfig(config) {
    byId('progemu-hypothesis').maxLength = config.max_hypothesis_length;
    byId('progemu-seed').placeholder = config.default_seed === null ? 'node default' : 'default ' + config.default_seed;
    byId('progemu-cfg').placeholder = config.default_cfg_scale === null ? 'node default'
      : 'default ' + config.default_cfg_scale;
    byId('progemu-cfg').max = config.max_cfg_scale;
    const box = byId('progemu-suggestions');
    box.replaceChildren();
    if (config.suggestions.length) {
      box.append(el('span', {}, 'Suggestions: '));
    }
    config.suggestions.forEach((text) => {
      const link = el('a', {href: '#', class: 'progemu-suggestion'}, text);
      link.addEventListener('click', (event) => {
        event.preventDefault();
        byId('progemu-hypothesis').value = text;
        byId('progemu-hypothesis').focus();
        showError('');
      });
      box.append(link);
    });
  }

  // --- a request's state and result ----------------------------------------------------------------

  function renderSteps(state) {
    const steps = byId('progemu-steps');
    steps.replaceChildren();
    if (state === 'failed') {
      return;
    }
    const current = STATES.indexOf(state);
    STATES.forEach((name, i) => {
      const step = el('span', {class: 'progemu-step'}, (i ? '\u203a ' : '') + name);
      if (i !== current) {
        step.classList.toggle('progemu-past', i < current);
      } else {
        step.classList.add('progemu-current');
      }
      steps.append(step);
    });
  }

  function warning(checks) {
    if (checks.consistency && checks.consistency.consistent === false) {
      return 'Inconsistent with the hypothesis: ' + checks.consistency.summary;
    }
    return checks.flagged ? 'Input outside the training data: ' + checks.input.summary : null;
  }

  function renderResults(job) {
    const box = byId('progemu-results');
    box.replaceChildren();
    if (job.state !== 'done' || !job.results) {
      return;
    }
    const checks = job.results.checks;
    const flagged = checks ? warning(checks) : null;
    if (flagged) {
      // a result the model cannot stand behind is never shown as a normal one
      box.append(el('div', {id: 'progemu-flagged'}, flagged));
    }
    if (job.report_image) {
      const figure = el('figure');
      figure.append(el('img', {id: 'progemu-report-image', alt: 'Report page: prior, counterfactual and difference',
                               src: new URL('instances/' + job.report_image + '/preview', ROOT).href}));
      box.append(figure);
    } else {
      box.append(el('div', {id: 'progemu-report-missing'}, 'The report page is not in Orthanc yet.'));
    }
    box.append(el('div', {id: 'progemu-hypothesis-shown'}, 'Hypothesis: ' + job.hypothesis));
    if (job.sampler) {
      box.append(el('div', {}, 'Seed ' + job.sampler.seed + ', guidance scale ' + job.sampler.cfg_scale +
                                ' (the same seed and settings give the same image)'));
    }
    if (job.results.interpretation) {
      box.append(el('div', {}, 'Interpretation:'));
      box.append(el('div', {id: 'progemu-interpretation'}, job.results.interpretation));
    }
    if (checks) {
      box.append(el('div', {id: 'progemu-checks'}, 'Consistency: ' + checks.consistency.summary +
                                                   '. Input check: ' + checks.input.summary + '.'));
    }
    const viewers = el('div', {id: 'progemu-viewers'}, (job.viewers || []).length ? 'Open the study in: ' : '');
    (job.viewers || []).forEach((viewer) => {
      viewers.append(el('a', {href: new URL(viewer.url, ROOT).href, target: '_blank', rel: 'noopener',
                              class: 'progemu-viewer'}, viewer.name));
    });
    box.append(viewers);
    const list = el('ul');
    // one entry per item of job.results.outputs, with the series' Orthanc id once Orthanc holds it
    (job.orthanc_series || []).forEach((series) => {
      const item = el('li');
      if (series.id) {
        item.append(el('a', {href: new URL('app/explorer.html#series?uuid=' + series.id, ROOT).href,
                             target: '_blank', rel: 'noopener', class: 'progemu-series-link',
                             'data-kind': series.kind}, series.label));
      } else {
        item.textContent = series.label + ' (not in Orthanc yet)';
      }
      list.append(item);
    });
    box.append(el('div', {}, 'New series in this study:'), list);
    box.append(el('span', {class: 'progemu-notice'}, NOTICE));
  }

  function render(job) {
    byId('progemu-status').hidden = false;
    const state = byId('progemu-state');
    state.textContent = job.state;
    state.classList.toggle('progemu-done', job.state === 'done');
    state.classList.toggle('progemu-failed', job.state === 'failed');
    renderSteps(job.state);
    byId('progemu-reason').textContent = job.reason ? 'Reason: ' + job.reason : '';
    byId('progemu-reason').hidden = !job.reason;
    renderResults(job);
  }

  function terminal(job) {
    return job.state === 'done' || job.state === 'failed';
  }

  function indexed(job) {
    return job.state !== 'done' || (job.orthanc_series || []).every((series) => series.id);
  }

  async function pollOnce(mine) {
    mine.timer = null;
    let job;
    try {
      job = await call('GET', 'counterfactuals/' + encodeURIComponent(mine.id));
    } catch (error) {
      if (followed === mine) {
        showError(error.message);
        if (error.status !== 404) {
          mine.timer = setTimeout(() => pollOnce(mine), 1000); // the node may come back
        }
      }
      return;
    }
    if (followed !== mine) {
      return;
    }
    showError('');
    render(job);
    if (!terminal(job) || (!indexed(job) && mine.retries-- > 0)) {
      mine.timer = setTimeout(() => pollOnce(mine), 1000);
    } else {
      loadHistory();
    }
  }

  function follow(job) {
    if (followed && followed.timer) {
      clearTimeout(followed.timer);
    }
    followed = {id: job.id, timer: null, retries: LOOKUP_RETRIES};
    render(job);
    pollOnce(followed); // a job from the list lacks the Orthanc ids of its outputs
  }

  async function loadHistory() {
    let answer;
    try {
      answer = await call('GET', 'studies/' + STUDY + '/counterfactuals?limit=10');
    } catch (error) {
      return; // the form works without the list
    }
    const box = byId('progemu-history');
    box.replaceChildren();
    if (!answer.items || !answer.items.length) {
      return;
    }
    const list = el('ul');
    answer.items.forEach((job) => {
      const item = el('li', {title: 'show this request'},
                      job.state + ': ' + job.hypothesis + ' (' + (job.created_at || '').slice(0, 16) + ')');
      item.addEventListener('click', () => follow(job));
      list.append(item);
    });
    box.append(el('div', {}, 'Earlier requests for this study:'), list);
  }

  // --- submitting ----------------------------------------------------------------------------------

  function readNumber(id, integer) {
    const raw = byId(id).value.trim();
    if (raw === '') {
      return {value: null};
    }
    if (integer ? !/^[0-9]+$/.test(raw) : !isFinite(Number(raw))) {
      return {error: true};
    }
    return {value: integer ? parseInt(raw, 10) : Number(raw)};
  }

  async function submit(event) {
    event.preventDefault();
    const hypothesis = byId('progemu-hypothesis').value.trim();
    const seed = readNumber('progemu-seed', true);
    const cfg = readNumber('progemu-cfg', false);
    if (!hypothesis) {
      showError('Type a hypothesis first, e.g. "the left pleural effusion worsens".');
      return;
    }
    if (seed.error || cfg.error) {
      showError(seed.error ? 'The seed must be a whole number of 0 or more.' : 'The guidance scale must be a number.');
      return;
    }
    const body = {hypothesis: hypothesis};
    if (byId('progemu-override').checked) {
      body.allow_out_of_distribution = true;
    }
    if (seed.value !== null) {
      body.seed = seed.value;
    }
    if (cfg.value !== null) {
      body.cfg_scale = cfg.value;
    }
    showError('');
    const button = byId('progemu-submit');
    button.disabled = true;
    button.textContent = 'Submitting\u2026';
    try {
      follow(await call('POST', 'studies/' + STUDY + '/counterfactuals', body));
      loadHistory();
    } catch (error) {
      showError(error.message);
    } finally {
      button.disabled = false;
      button.textContent = 'Submit';
    }
  }

  byId('progemu-form').addEventListener('submit', submit);
  // an error refers to what was sent: editing the form clears it
  ['progemu-hypothesis', 'progemu-seed', 'progemu-cfg'].forEach((id) => {
    byId(id).addEventListener('input', () => showError(''));
  });
  call('GET', 'config').then(applyConfig, (error) => {
    showError('The ProgEmu settings could not be loaded: ' + error.message);
  });
  loadHistory();
  byId('progemu-hypothesis').focus();
}());
