// ProgEmu counterfactuals on the study page of Orthanc Explorer (loaded by progemu_orthanc.py).
//
// A "Counterfactual" button opens a form: the radiologist types a hypothesis ("the left pleural
// effusion worsens"), submits it to the plugin's /progemu routes (which hold the node's token), and
// the form follows the request every second until the synthetic follow-up series are in the study.
// Everything the node or the user wrote is inserted with .text(), never as HTML.
(function () {
  'use strict';

  var API = '../progemu';
  var STATES = ['queued', 'receiving', 'running', 'delivering', 'done'];
  var NOTICE = 'Synthetic images \u2014 not for diagnosis';
  var config = null;     // from /progemu/config, loaded once
  var shownStudy = null; // the study the panel belongs to
  var followed = null;   // {id, study, timer, done}

  var CSS = [
    '#progemu-panel { border: 2px solid #c0392b; border-radius: 8px; padding: 10px 14px; margin: 0 0 14px;',
    '  background: #fffaf5; font-size: 14px; }',
    '#progemu-panel h3 { margin: 4px 0 8px; }',
    '.progemu-notice { background: #c0392b; color: #fff; font-weight: bold; padding: 4px 8px;',
    '  border-radius: 4px; display: inline-block; }',
    '#progemu-panel label { display: block; font-weight: bold; margin: 8px 0 4px; }',
    '#progemu-hypothesis { width: 100%; box-sizing: border-box; font-size: 15px; padding: 6px;',
    '  border: 1px solid #999; border-radius: 4px; }',
    '#progemu-suggestions { margin: 6px 0; line-height: 2; }',
    '.progemu-suggestion { display: inline-block; border: 1px solid #2a6496; color: #2a6496 !important;',
    '  border-radius: 12px; padding: 0 10px; margin: 0 4px 0 0; text-decoration: none !important;',
    '  font-weight: normal; cursor: pointer; white-space: nowrap; }',
    '.progemu-suggestion:hover { background: #e8f0f8; }',
    '.progemu-options { display: flex; gap: 16px; flex-wrap: wrap; }',
    '.progemu-options input { width: 9em; font-size: 14px; padding: 4px; border: 1px solid #999;',
    '  border-radius: 4px; }',
    '.progemu-options .progemu-hint { font-weight: normal; color: #666; font-size: 12px; }',
    '#progemu-error { color: #a00; font-weight: bold; margin: 8px 0; }',
    '#progemu-submit { font-size: 15px; padding: 6px 18px; margin-top: 10px; cursor: pointer; }',
    '#progemu-status { margin-top: 10px; padding-top: 8px; border-top: 1px solid #ddd; }',
    '#progemu-state { font-weight: bold; text-transform: none; }',
    '#progemu-state.progemu-done { color: #1e7b34; }',
    '#progemu-state.progemu-failed { color: #a00; }',
    '#progemu-steps { margin-left: 1.5em; font-size: 13px; }',
    '.progemu-step { color: #999; margin-right: 4px; }',
    '.progemu-step.progemu-current { color: #000; font-weight: bold; }',
    '.progemu-step.progemu-past { color: #1e7b34; }',
    '#progemu-reason { color: #a00; margin: 4px 0; }',
    '#progemu-flagged { background: #000; color: #fff; font-weight: bold; padding: 6px 10px; margin: 6px 0; }',
    '#progemu-results ul { margin: 6px 0; padding-left: 20px; }',
    '#progemu-interpretation { background: #f4f4f4; border-left: 4px solid #c0392b; padding: 6px 10px;',
    '  margin: 6px 0; white-space: pre-wrap; }',
    '#progemu-history { margin-top: 10px; font-size: 13px; }',
    '#progemu-history li { cursor: pointer; }'
  ].join('\n');

  // jqm.page.params fills $.mobile.pageData from "#study?uuid=..." before the page shows; the hash
  // itself is the fallback.
  function studyFromUrl() {
    var data = $.mobile && $.mobile.pageData;
    if (data && data.active === 'study' && data.uuid) {
      return data.uuid;
    }
    var match = /^#study\?(?:.*&)?uuid=([0-9a-f-]+)/.exec(window.location.hash || '');
    return match ? match[1] : null;
  }

  function errorText(xhr) {
    var detail = null;
    try {
      detail = JSON.parse(xhr.responseText).detail;
    } catch (e) {
      detail = null;
    }
    if (typeof detail === 'string' && detail) {
      return detail.charAt(0).toUpperCase() + detail.slice(1) + '.';
    }
    switch (xhr.status) {
      case 0: return 'Orthanc did not answer: check the connection.';
      case 400: return 'The request was refused: check the hypothesis, seed and guidance scale.';
      case 404: return 'Not found: the study or the request no longer exists.';
      case 502: return 'The ProgEmu node is not reachable: ask IT to check it.';
      default: return 'The request failed (HTTP ' + xhr.status + ').';
    }
  }

  function showError(message) {
    $('#progemu-error').text(message || '').toggle(!!message);
  }

  // --- building the panel ----------------------------------------------------------------------

  function buildPanel() {
    var panel = $('<div id="progemu-panel">').hide();
    panel.append($('<span class="progemu-notice">').text(NOTICE));
    panel.append($('<h3>').text('Counterfactual follow-up (ProgEmu)'));

    var form = $('<div id="progemu-form">');
    form.append($('<label for="progemu-hypothesis">').text('Hypothesis: what should the follow-up image show?'));
    form.append($('<textarea id="progemu-hypothesis" data-role="none" rows="3">')
                .attr('placeholder', 'e.g. the left pleural effusion worsens'));
    form.append($('<div id="progemu-suggestions">'));

    var options = $('<div class="progemu-options">');
    options.append($('<div>')
      .append($('<label for="progemu-seed">').text('Seed ')
              .append($('<span class="progemu-hint">').text('(optional; same seed, same image)')))
      .append($('<input id="progemu-seed" type="number" min="0" step="1" data-role="none">')));
    options.append($('<div>')
      .append($('<label for="progemu-cfg">').text('Guidance scale ')
              .append($('<span class="progemu-hint">').text('(optional; 0 to 30)')))
      .append($('<input id="progemu-cfg" type="number" min="0" max="30" step="0.5" data-role="none">')));
    form.append(options);
    form.append($('<div class="progemu-override">')
      .append($('<input id="progemu-override" type="checkbox" data-role="none">'))
      .append($('<label for="progemu-override">')
              .text(' Research override: generate even if the prior is outside what the model was trained on ')
              .append($('<span class="progemu-hint">').text('(recorded in every output)'))));
    form.append($('<div id="progemu-error">').hide());
    form.append($('<button id="progemu-submit" type="button" data-role="none">').text('Submit')
                .click(function (event) { event.preventDefault(); submit(); }));
    panel.append(form);

    var status = $('<div id="progemu-status">').hide();
    status.append($('<div>').append('State: ').append($('<span id="progemu-state">'))
                  .append(' ').append($('<span id="progemu-steps">')));
    status.append($('<div id="progemu-reason">'));
    status.append($('<div id="progemu-results">'));
    panel.append(status);

    panel.append($('<div id="progemu-history">'));
    return panel;
  }

  function applyConfig() {
    var box = $('#progemu-suggestions').empty();
    if (!config) {
      return;
    }
    $('#progemu-hypothesis').attr('maxlength', config.max_hypothesis_length);
    $('#progemu-seed').attr('placeholder', config.default_seed === null ? 'node default' : 'default ' + config.default_seed);
    $('#progemu-cfg').attr('placeholder', config.default_cfg_scale === null ? 'node default'
                                                                             : 'default ' + config.default_cfg_scale);
    $('#progemu-cfg').attr('max', config.max_cfg_scale);
    if (config.suggestions.length) {
      box.append($('<span>').text('Suggestions: '));
    }
    $.each(config.suggestions, function (i, text) {
      box.append($('<a href="#" class="progemu-suggestion">').text(text).click(function (event) {
        event.preventDefault();
        $('#progemu-hypothesis').val(text).focus();
      }));
    });
  }

  function loadConfig() {
    if (config) {
      applyConfig();
      return;
    }
    $.ajax({
      url: API + '/config', dataType: 'json', cache: false,
      success: function (answer) { config = answer; applyConfig(); },
      error: function (xhr) { showError('The ProgEmu settings could not be loaded: ' + errorText(xhr)); }
    });
  }

  // --- following a request ---------------------------------------------------------------------

  function renderSteps(state) {
    var steps = $('#progemu-steps').empty();
    if (state === 'failed') {
      return;
    }
    var current = $.inArray(state, STATES);
    $.each(STATES, function (i, name) {
      var cls = i < current ? 'progemu-past' : (i === current ? 'progemu-current' : '');
      steps.append($('<span class="progemu-step">').addClass(cls).text((i ? '\u203a ' : '') + name));
    });
  }

  function renderResults(job) {
    var box = $('#progemu-results').empty();
    if (job.state !== 'done' || !job.results) {
      return;
    }
    var list = $('<ul>');
    // the plugin adds orthanc_series to the job it relays: one entry per item of job.results.outputs
    $.each(job.orthanc_series || [], function (i, series) {
      var item = $('<li>');
      if (series.id) {
        item.append($('<a>').attr('href', 'explorer.html#series?uuid=' + series.id)
                    .attr('data-ajax', 'false').addClass('progemu-series-link')
                    .attr('data-kind', series.kind).text(series.label));
      } else {
        item.text(series.label + ' (not in Orthanc yet)');
      }
      list.append(item);
    });
    var checks = job.results.checks;
    if (checks && checks.flagged) {
      // a result the model cannot stand behind is never shown as a normal one
      box.append($('<div id="progemu-flagged">')
                 .text(checks.consistency.consistent === false ? checks.consistency.summary
                                                                : 'Input outside the training data: ' + checks.input.summary));
    }
    box.append($('<div>').text('New series in this study:')).append(list);
    box.append($('<div>').text('Hypothesis: ' + job.hypothesis));
    if (job.sampler) {
      box.append($('<div>').text('Seed ' + job.sampler.seed + ', guidance scale ' + job.sampler.cfg_scale +
                                 ' (the same seed and settings give the same image)'));
    }
    if (job.results.interpretation) {
      box.append($('<div>').text('Interpretation:'));
      box.append($('<div id="progemu-interpretation">').text(job.results.interpretation));
    }
    if (checks) {
      box.append($('<div id="progemu-checks">').text('Consistency: ' + checks.consistency.summary +
                                                      '. Input check: ' + checks.input.summary + '.'));
    }
    box.append($('<span class="progemu-notice">').text(NOTICE));
  }

  function render(job) {
    $('#progemu-status').show();
    $('#progemu-state').text(job.state)
      .toggleClass('progemu-done', job.state === 'done')
      .toggleClass('progemu-failed', job.state === 'failed');
    renderSteps(job.state);
    $('#progemu-reason').text(job.reason ? 'Reason: ' + job.reason : '').toggle(!!job.reason);
    renderResults(job);
  }

  function terminal(job) {
    return job.state === 'done' || job.state === 'failed';
  }

  function stopFollowing() {
    if (followed && followed.timer) {
      clearTimeout(followed.timer);
      followed.timer = null;
    }
  }

  function pollOnce() {
    var mine = followed;
    if (!mine) {
      return;
    }
    mine.timer = null;
    $.ajax({
      url: API + '/counterfactuals/' + mine.id, dataType: 'json', cache: false,
      success: function (job) {
        if (followed !== mine) {
          return;
        }
        showError('');
        render(job);
        if (terminal(job)) {
          mine.done = true;
          loadHistory();
          if (job.state === 'done' && typeof RefreshStudy === 'function' && studyFromUrl() === mine.study) {
            RefreshStudy();  // Orthanc Explorer's own: lists the new series on the page
          }
        } else {
          mine.timer = setTimeout(pollOnce, 1000);
        }
      },
      error: function (xhr) {
        if (followed !== mine) {
          return;
        }
        showError(errorText(xhr));
        if (xhr.status !== 404) {
          mine.timer = setTimeout(pollOnce, 1000);  // the node may come back
        }
      }
    });
  }

  function follow(job) {
    stopFollowing();
    followed = {id: job.id, study: shownStudy, timer: null, done: terminal(job)};
    render(job);
    if (!followed.done) {
      followed.timer = setTimeout(pollOnce, 1000);
    } else {
      pollOnce();  // fetch the Orthanc ids of the result series
    }
  }

  function loadHistory() {
    var study = shownStudy;
    if (!study) {
      return;
    }
    $.ajax({
      url: API + '/studies/' + study + '/counterfactuals?limit=10', dataType: 'json', cache: false,
      success: function (answer) {
        var box = $('#progemu-history').empty();
        if (study !== shownStudy || !answer.items || !answer.items.length) {
          return;
        }
        var list = $('<ul>');
        $.each(answer.items, function (i, job) {
          list.append($('<li>').attr('title', 'show this request')
                      .text(job.state + ': ' + job.hypothesis + ' (' + (job.created_at || '').slice(0, 16) + ')')
                      .click(function () { follow(job); }));
        });
        box.append($('<div>').text('Earlier requests for this study:')).append(list);
      }
    });
  }

  // --- actions ---------------------------------------------------------------------------------

  function readNumber(selector, integer) {
    var raw = $.trim($(selector).val() || '');
    if (raw === '') {
      return {value: null};
    }
    if (integer ? !/^[0-9]+$/.test(raw) : !isFinite(Number(raw))) {
      return {error: true};
    }
    return {value: integer ? parseInt(raw, 10) : Number(raw)};
  }

  function submit() {
    var study = shownStudy || studyFromUrl();
    var hypothesis = $.trim($('#progemu-hypothesis').val() || '');
    var seed = readNumber('#progemu-seed', true);
    var cfg = readNumber('#progemu-cfg', false);
    if (!hypothesis) {
      showError('Type a hypothesis first, e.g. "the left pleural effusion worsens".');
      return;
    }
    if (seed.error || cfg.error) {
      showError(seed.error ? 'The seed must be a whole number of 0 or more.' : 'The guidance scale must be a number.');
      return;
    }
    var body = {hypothesis: hypothesis};
    if ($('#progemu-override').is(':checked')) {
      body.allow_out_of_distribution = true;
    }
    if (seed.value !== null) {
      body.seed = seed.value;
    }
    if (cfg.value !== null) {
      body.cfg_scale = cfg.value;
    }
    showError('');
    var button = $('#progemu-submit').prop('disabled', true).text('Submitting\u2026');
    $.ajax({
      url: API + '/studies/' + study + '/counterfactuals', type: 'POST', dataType: 'json', cache: false,
      // the plugin refuses a POST without both: what keeps another site's form from submitting as the user
      contentType: 'application/json', headers: {'X-Requested-With': 'progemu'}, data: JSON.stringify(body),
      success: function (job) { follow(job); loadHistory(); },
      error: function (xhr) { showError(errorText(xhr)); },
      complete: function () { button.prop('disabled', false).text('Submit'); }
    });
  }

  function reset() {
    stopFollowing();
    followed = null;
    showError('');
    $('#progemu-panel').hide();
    $('#progemu-status').hide();
    $('#progemu-results, #progemu-history, #progemu-reason, #progemu-state, #progemu-steps').empty();
    $('#progemu-hypothesis, #progemu-seed, #progemu-cfg').val('');
    $('#progemu-override').prop('checked', false);
  }

  function toggle(event) {
    event.preventDefault();
    var panel = $('#progemu-panel');
    if (panel.is(':visible')) {
      panel.hide();
      return;
    }
    shownStudy = studyFromUrl();
    panel.show();
    loadConfig();
    loadHistory();
    $('#progemu-hypothesis').focus();
  }

  $('#study').live('pagebeforecreate', function () {
    if ($('#progemu-button').length) {
      return;
    }
    if (!$('#progemu-style').length) {
      $('head').append($('<style id="progemu-style">').text(CSS));
    }
    var button = $('<a href="#" id="progemu-button" data-role="button" data-icon="plus" data-theme="e">')
      .text('Counterfactual');
    button.insertBefore($('#study-delete').closest('ul'));
    button.click(toggle);
    $('#list-series').parent().prepend(buildPanel());
    // an error refers to what was sent: editing the form clears it
    $('#progemu-hypothesis, #progemu-seed, #progemu-cfg').bind('input', function () { showError(''); });
  });

  // Orthanc Explorer reuses the page for every study: start afresh on another study, and pause
  // polling while the page is hidden (resumed when the same study comes back).
  $('#study').live('pagebeforeshow', function () {
    var study = studyFromUrl();
    if (study !== shownStudy) {
      reset();
      shownStudy = study;
    } else if (followed && !followed.done && !followed.timer) {
      pollOnce();
    }
  });

  $('#study').live('pagehide', function () {
    stopFollowing();
  });
}());
