"""What the tables say: the d_items and d_labitems rows, the text values charted, the
vocabularies of admissions and the ICD-10-CM codes, with the d_items / d_labitems /
d_icd_diagnoses tables built from them."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from ehrjepa.synth.columns import ints
from ehrjepa.synth.schemas import SCHEMAS

# Items. Labels, categories and units are those of the MIMIC-IV v2.2 d_items / d_labitems tables
# (public demo, doi 10.13026/dp1f-ex47).

# itemid, label, abbreviation, category, unitname, param_type, lownormalvalue, highnormalvalue
D_ITEMS = [
    (220045, "Heart Rate", "HR", "Routine Vital Signs", "bpm", "Numeric", None, None),
    (220050, "Arterial Blood Pressure systolic", "ABPs", "Routine Vital Signs", "mmHg", "Numeric", 90, 140.0),
    (220051, "Arterial Blood Pressure diastolic", "ABPd", "Routine Vital Signs", "mmHg", "Numeric", 60, 90.0),
    (220052, "Arterial Blood Pressure mean", "ABPm", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220179, "Non Invasive Blood Pressure systolic", "NBPs", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220180, "Non Invasive Blood Pressure diastolic", "NBPd", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220181, "Non Invasive Blood Pressure mean", "NBPm", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (225309, "ART BP Systolic", "ART BP Systolic", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (225310, "ART BP Diastolic", "ART BP Diastolic", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (225312, "ART BP Mean", "ART BP Mean", "Routine Vital Signs", "mmHg", "Numeric", None, None),
    (220210, "Respiratory Rate", "RR", "Respiratory", "insp/min", "Numeric", None, None),
    (224690, "Respiratory Rate (Total)", "Respiratory Rate (Total)", "Respiratory", "insp/min", "Numeric", None, 36.0),
    (220277, "O2 saturation pulseoxymetry", "SpO2", "Respiratory", "%", "Numeric", None, None),
    (223762, "Temperature Celsius", "Temperature C", "Routine Vital Signs", "°C", "Numeric", 36, 37.5),
    (223761, "Temperature Fahrenheit", "Temperature F", "Routine Vital Signs", "°F", "Numeric", None, None),
    (220739, "GCS - Eye Opening", "Eye Opening", "Neurological", None, "Text", None, None),
    (223900, "GCS - Verbal Response", "Verbal Response", "Neurological", None, "Text", None, None),
    (223901, "GCS - Motor Response", "Motor Response", "Neurological", None, "Text", None, None),
    (223835, "Inspired O2 Fraction", "FiO2", "Respiratory", "None", "Numeric", None, None),
    # unrelated items: a pipeline that only knows the features above must drop them
    (220048, "Heart Rhythm", "Heart Rhythm", "Routine Vital Signs", None, "Text", None, None),
    (224650, "Ectopy Type 1", "Ectopy Type 1", "Routine Vital Signs", None, "Text", None, None),
    (220046, "Heart rate Alarm - High", "HR Alarm - High", "Alarms", "bpm", "Numeric", None, None),
    (220047, "Heart Rate Alarm - Low", "HR Alarm - Low", "Alarms", "bpm", "Numeric", None, None),
    (223751, "Non-Invasive Blood Pressure Alarm - High", "NBP Alarm - High", "Alarms", "mmHg", "Numeric", None, None),
    (223752, "Non-Invasive Blood Pressure Alarm - Low", "NBP Alarm - Low", "Alarms", "mmHg", "Numeric", None, None),
    (223770, "O2 Saturation Pulseoxymetry Alarm - Low", "SpO2 Alarm - Low", "Alarms", "%", "Numeric", None, None),
    (224161, "Resp Alarm - High", "Resp Alarm - High", "Alarms", "insp/min", "Numeric", None, None),
    (224162, "Resp Alarm - Low", "Resp Alarm - Low", "Alarms", "insp/min", "Numeric", None, None),
    (226253, "SpO2 Desat Limit", "SpO2 Desat Limit", "Alarms", "%", "Numeric", None, None),
    (224641, "Alarms On", "Alarms On", "Alarms", None, "Checkbox", None, None),
    (224168, "Parameters Checked", "Parameters Checked", "Alarms", None, "Checkbox", None, None),
    (226512, "Admission Weight (Kg)", "Admission Weight (Kg)", "General", "kg", "Numeric", None, None),
    (223834, "O2 Flow", "O2 Flow", "Respiratory", "L/min", "Numeric", None, None),
    (226732, "O2 Delivery Device(s)", "O2 Delivery Device(s)", "Respiratory", None, "Text", None, None),
    (228096, "Richmond-RAS Scale", "Richmond-RAS Scale", "Pain/Sedation", None, "Text", None, None),
    (223781, "Pain Present", "Pain Present", "Pain/Sedation", None, "Text", None, None),
    (223991, "Cough Effort", "Cough Effort", "Pulmonary", None, "Text", None, None),
    (224080, "Head of Bed", "HOB", "Treatments", None, "Text", None, None),
    (224086, "Activity Tolerance", "Activity Tolerance", "Treatments", None, "Text", None, None),
    (224082, "Turn", "Turn", "Treatments", None, "Text", None, None),
    (226168, "Oral Care", "Oral Care", "Treatments", None, "Text", None, None),
    (224026, "Skin Integrity", "Skin Integrity", "Skin - Assessment", None, "Text", None, None),
    (224054, "Braden Sensory Perception", "Braden Sensory Perception", "Skin - Assessment", None, "Text", None, None),
]
ITEM_IDS = np.array([r[0] for r in D_ITEMS], np.int64)
ITEM = {r[0]: i for i, r in enumerate(D_ITEMS)}  # itemid -> item code (row of D_ITEMS)
IS_FEATURE = np.isin(ITEM_IDS, [220045, 220050, 220051, 220052, 220179, 220180, 220181, 225309,
                                225310, 225312, 220210, 224690, 220277, 223762, 223761, 223835])
# valueuom written in chartevents (unitname, except FiO2 which is charted in percent)
ITEM_UOM = [r[4] if r[0] != 223835 else None for r in D_ITEMS]

# Text values. GCS rows carry the text in `value` and the score in `valuenum`, as in MIMIC.
GCS_TEXT = {
    220739: ["No Response", "To Pain", "To Speech", "Spontaneously"],
    223900: ["No Response", "Incomprehensible sounds", "Inappropriate Words", "Confused", "Oriented"],
    223901: ["No response", "Abnormal extension", "Abnormal Flexion", "Flex-withdraws",
             "Localizes Pain", "Obeys Commands"],
}
TEXT_ITEMS = {  # unrelated text items charted every 4 h (assessments) or hourly (rhythm)
    224650: ["None", "PVC's", "PAC's"],
    226732: ["Nasal cannula", "Endotracheal tube", "Face tent", "None"],
    228096: ["0  Alert and calm", "-1 Drowsy", "-2 Light sedation", "-3 Moderate sedation",
             "-4 Deep sedation", "+1 Restless"],
    223781: ["No", "Yes"],
    223991: ["Strong", "Weak", "Absent"],
    224080: ["30 degrees", "45 degrees", "Flat"],
    224086: ["Tolerated well", "Fatigues easily"],
    224082: ["Side to side", "Supine", "Refused"],
    226168: ["Done", "Refused"],
    224026: ["Intact", "Not intact"],
    224054: ["No Impairment", "Slightly Limited", "Very Limited", "Completely Limited"],
}
RHYTHM_TEXT = ["SB (Sinus Bradycardia)", "SR (Sinus Rhythm)", "ST (Sinus Tachycardia)",
               "AF (Atrial Fibrillation)"]
DIRTY_TEXT = ["UTA", "Error", "see note", "___"]  # text where a number belongs
CHECKBOX_TEXT = ["Yes"]
ALARMS = [(220046, 120.0), (220047, 50.0), (223751, 160.0), (223752, 90.0), (223770, 90.0),
          (224161, 35.0), (224162, 8.0), (226253, 88.0)]


def _vocab() -> tuple[list[str], dict]:
    """One list of every text value charted, and the offset of each group in it."""
    words, start = [], {}
    groups = [("rhythm", RHYTHM_TEXT), ("dirty", DIRTY_TEXT), ("check", CHECKBOX_TEXT)]
    groups += [(k, v) for k, v in GCS_TEXT.items()] + [(k, v) for k, v in TEXT_ITEMS.items()]
    for key, values in groups:
        start[key] = len(words)
        words += values
    return words, start


TEXT_VOCAB, TEXT_AT = _vocab()

# Labs: itemid, label, fluid, category, valueuom, ref_range_lower, ref_range_upper, decimals
D_LABITEMS = [
    (50912, "Creatinine", "Blood", "Chemistry", "mg/dL", 0.5, 1.2, 1),
    (51006, "Urea Nitrogen", "Blood", "Chemistry", "mg/dL", 6.0, 20.0, 0),
    (50983, "Sodium", "Blood", "Chemistry", "mEq/L", 133.0, 145.0, 0),
    (50971, "Potassium", "Blood", "Chemistry", "mEq/L", 3.3, 5.1, 1),
    (50902, "Chloride", "Blood", "Chemistry", "mEq/L", 96.0, 108.0, 0),
    (50882, "Bicarbonate", "Blood", "Chemistry", "mEq/L", 22.0, 32.0, 0),
    (50931, "Glucose", "Blood", "Chemistry", "mg/dL", 70.0, 100.0, 0),
    (50868, "Anion Gap", "Blood", "Chemistry", "mEq/L", 10.0, 18.0, 0),  # unrelated
    (50960, "Magnesium", "Blood", "Chemistry", "mg/dL", 1.6, 2.6, 1),  # unrelated
    (51222, "Hemoglobin", "Blood", "Hematology", "g/dL", 13.7, 17.5, 1),
    (51221, "Hematocrit", "Blood", "Hematology", "%", 40.0, 51.0, 1),
    (51301, "White Blood Cells", "Blood", "Hematology", "K/uL", 4.0, 10.0, 1),
    (51265, "Platelet Count", "Blood", "Hematology", "K/uL", 150.0, 400.0, 0),
    (50813, "Lactate", "Blood", "Blood Gas", "mmol/L", 0.5, 2.0, 1),
    (50820, "pH", "Blood", "Blood Gas", "units", 7.35, 7.45, 2),
]
LAB_IDS = np.array([r[0] for r in D_LABITEMS], np.int64)
LAB = {r[0]: i for i, r in enumerate(D_LABITEMS)}
PANELS = {  # lab panels drawn together: item codes
    "chem": [LAB[i] for i in (50912, 51006, 50983, 50971, 50902, 50882, 50931, 50868, 50960)],
    "cbc": [LAB[i] for i in (51222, 51221, 51301, 51265)],
    "gas": [LAB[i] for i in (50813, 50820)],
}
GLUCOSE_COMMENT = "IF FASTING, 70-100 NORMAL, >125 PROVISIONAL DIABETES."
LAB_COMMENTS = [None, GLUCOSE_COMMENT, "VERIFIED.", "HEMOLYZED SPECIMEN, RESULT MAY BE AFFECTED."]
LAB_DIRTY_TEXT = ["___", "ERROR", "UNABLE TO REPORT", "HEMOLYZED"]

# Admission vocabularies (values seen in the demo)
ICU_ADMISSION_TYPES = (["EW EMER.", "URGENT", "DIRECT EMER.", "SURGICAL SAME DAY ADMISSION",
                        "ELECTIVE", "OBSERVATION ADMIT"], [0.55, 0.17, 0.08, 0.1, 0.05, 0.05])
WARD_ADMISSION_TYPES = (["EW EMER.", "OBSERVATION ADMIT", "EU OBSERVATION", "URGENT", "ELECTIVE",
                         "DIRECT OBSERVATION", "AMBULATORY OBSERVATION"],
                        [0.3, 0.22, 0.15, 0.1, 0.1, 0.08, 0.05])
ED_TYPES = {"EW EMER.", "EU OBSERVATION", "DIRECT EMER."}
ADMISSION_LOCATIONS = (["PHYSICIAN REFERRAL", "TRANSFER FROM HOSPITAL", "CLINIC REFERRAL",
                        "PROCEDURE SITE", "WALK-IN/SELF REFERRAL", "PACU"],
                       [0.45, 0.3, 0.08, 0.07, 0.05, 0.05])
DISCHARGE_LOCATIONS = ([None, "HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB",
                        "CHRONIC/LONG TERM ACUTE CARE", "HOSPICE", "AGAINST ADVICE"],
                       [0.15, 0.3, 0.27, 0.15, 0.05, 0.04, 0.02, 0.02])
INSURANCE = ["Medicare", "Medicaid", "Other"]
MARITAL = ([None, "SINGLE", "MARRIED", "WIDOWED", "DIVORCED"], [0.05, 0.38, 0.3, 0.17, 0.1])
RACE = (["WHITE", "BLACK/AFRICAN AMERICAN", "UNKNOWN", "HISPANIC/LATINO - PUERTO RICAN",
         "ASIAN", "OTHER", "UNABLE TO OBTAIN", "BLACK/CAPE VERDEAN", "WHITE - OTHER EUROPEAN",
         "PATIENT DECLINED TO ANSWER"], [0.62, 0.15, 0.06, 0.04, 0.04, 0.03, 0.02, 0.02, 0.01,
                                         0.01])
CAREUNITS = (["Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
              "Cardiac Vascular Intensive Care Unit (CVICU)",
              "Medical/Surgical Intensive Care Unit (MICU/SICU)", "Trauma SICU (TSICU)",
              "Coronary Care Unit (CCU)", "Neuro Surgical Intensive Care Unit (Neuro SICU)",
              "Neuro Stepdown", "Neuro Intermediate"],
             [0.21, 0.18, 0.18, 0.16, 0.11, 0.09, 0.03, 0.02, 0.02])
YEAR_GROUPS = ["2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019"]

# Diagnoses: ICD-10-CM codes (written without the dot, as MIMIC-IV does) and their long titles,
# from the ICD-10-CM 2023 tabular list (CDC / CMS, FY2023 release).
ICD10 = {
    # sepsis, septic shock, shock
    "A419": "Sepsis, unspecified organism",
    "A4151": "Sepsis due to Escherichia coli [E. coli]",
    "A4101": "Sepsis due to Methicillin susceptible Staphylococcus aureus",
    "A403": "Sepsis due to Streptococcus pneumoniae",
    "R6520": "Severe sepsis without septic shock",
    "R6521": "Severe sepsis with septic shock",
    "R570": "Cardiogenic shock",
    "R571": "Hypovolemic shock",
    "R579": "Shock, unspecified",
    # acute kidney injury, acute respiratory failure, heart failure
    "N179": "Acute kidney failure, unspecified",
    "N170": "Acute kidney failure with tubular necrosis",
    "J9600": "Acute respiratory failure, unspecified whether with hypoxia or hypercapnia",
    "J9601": "Acute respiratory failure with hypoxia",
    "J9602": "Acute respiratory failure with hypercapnia",
    "J9621": "Acute and chronic respiratory failure with hypoxia",
    "I509": "Heart failure, unspecified",
    "I5023": "Acute on chronic systolic (congestive) heart failure",
    "I5033": "Acute on chronic diastolic (congestive) heart failure",
    "I5022": "Chronic systolic (congestive) heart failure",
    "I5032": "Chronic diastolic (congestive) heart failure",
    # reasons for admission
    "J189": "Pneumonia, unspecified organism",
    "N390": "Urinary tract infection, site not specified",
    "I214": "Non-ST elevation (NSTEMI) myocardial infarction",
    "K922": "Gastrointestinal hemorrhage, unspecified",
    "I639": "Cerebral infarction, unspecified",
    "I619": "Nontraumatic intracerebral hemorrhage, unspecified",
    "J441": "Chronic obstructive pulmonary disease with (acute) exacerbation",
    "K8590": "Acute pancreatitis without necrosis or infection, unspecified",
    "R079": "Chest pain, unspecified",
    "R55": "Syncope and collapse",
    # chronic conditions
    "E119": "Type 2 diabetes mellitus without complications",
    "I10": "Essential (primary) hypertension",
    "E785": "Hyperlipidemia, unspecified",
    "K219": "Gastro-esophageal reflux disease without esophagitis",
    "E039": "Hypothyroidism, unspecified",
    "J449": "Chronic obstructive pulmonary disease, unspecified",
    "I4891": "Unspecified atrial fibrillation",
    "D649": "Anemia, unspecified",
    "G4733": "Obstructive sleep apnea (adult) (pediatric)",
    "F32A": "Depression, unspecified",
    "Z87891": "Personal history of nicotine dependence",
    "I2510": "Atherosclerotic heart disease of native coronary artery without angina pectoris",
    "N1830": "Chronic kidney disease, stage 3 unspecified",
}
ICD_CODES = list(ICD10)
ICD = {c: i for i, c in enumerate(ICD_CODES)}  # code -> row of ICD_CODES


def dictionary_tables() -> dict:
    """The d_items, d_labitems and d_icd_diagnoses tables (name -> table)."""
    d_items = pa.table([
        ints([r[0] for r in D_ITEMS]), pa.array([r[1] for r in D_ITEMS]),
        pa.array([r[2] for r in D_ITEMS]), pa.array(["chartevents"] * len(D_ITEMS)),
        pa.array([r[3] for r in D_ITEMS]), pa.array([r[4] for r in D_ITEMS], pa.string()),
        pa.array([r[5] for r in D_ITEMS]), pa.array([r[6] for r in D_ITEMS], pa.int64()),
        pa.array([r[7] for r in D_ITEMS], pa.float64())], schema=SCHEMAS["d_items"])
    d_labitems = pa.table([
        ints([r[0] for r in D_LABITEMS]), pa.array([r[1] for r in D_LABITEMS]),
        pa.array([r[2] for r in D_LABITEMS]), pa.array([r[3] for r in D_LABITEMS])],
        schema=SCHEMAS["d_labitems"])
    codes = sorted(ICD_CODES)
    d_icd_diagnoses = pa.table([pa.array(codes), ints([10] * len(codes)),
                                pa.array([ICD10[c] for c in codes])],
                               schema=SCHEMAS["d_icd_diagnoses"])
    return dict(d_items=d_items, d_labitems=d_labitems, d_icd_diagnoses=d_icd_diagnoses)
