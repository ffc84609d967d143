// ProgEmu on the study page of the legacy Orthanc Explorer (loaded by progemu_orthanc.py).
//
// A "Counterfactual" button opens the plugin's request page of the study (app/page.html, served at
// /progemu/app/studies/{id}) in a new tab: the one form, which Orthanc Explorer 2 opens too.
(function () {
  'use strict';

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

  function pointAtStudy() {
    $('#progemu-button').attr('href', '../progemu/app/studies/' + studyFromUrl());
  }

  $('#study').live('pagebeforecreate', function () {
    if ($('#progemu-button').length) {
      return;
    }
    // target and data-ajax keep jQuery Mobile from loading the page into the Explorer
    $('<a id="progemu-button" data-role="button" data-icon="plus" data-theme="e" target="_blank" ' +
      'rel="noopener" data-ajax="false">')
      .text('Counterfactual')
      .insertBefore($('#study-delete').closest('ul'))
      .click(pointAtStudy);
  });

  // Orthanc Explorer reuses the page for every study
  $('#study').live('pagebeforeshow', pointAtStudy);
}());
