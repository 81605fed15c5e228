"""Clinical catalogues for synthetic clinics: the anamnesis questionnaire, CIE-10 encounters, dental procedures, vaccines."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    section: str | None
    text: str
    answer_type: str  # 'text' | 'yes_no' | 'choice' | 'number' | 'date'
    options: tuple[str, ...] = ()  # possible answers (choice and text), or (low, high) for number
    is_active: bool = True
    female_only: bool = False


_FAMILY = "Antecedentes heredofamiliares"
_PATHOLOGICAL = "Antecedentes personales patológicos"
_NON_PATHOLOGICAL = "Antecedentes personales no patológicos"
_DENTAL = "Antecedentes odontológicos"

QUESTIONNAIRE: tuple[Question, ...] = (
    Question(_FAMILY, "¿Algún familiar directo padece diabetes?", "yes_no"),
    Question(_FAMILY, "¿Algún familiar directo padece hipertensión arterial?", "yes_no"),
    Question(_FAMILY, "¿Hay antecedentes de cáncer en su familia? ¿Cuál?", "text",
             ("Niega", "Madre: cáncer de mama", "Abuelo paterno: cáncer de próstata", "Padre: cáncer de colon")),
    Question(_FAMILY, "¿Algún familiar padece cardiopatías?", "yes_no"),
    Question(_PATHOLOGICAL, "¿Padece alguna enfermedad crónica?", "text",
             ("Ninguna", "Diabetes tipo 2", "Hipertensión", "Asma", "Hipotiroidismo", "Artritis reumatoide")),
    Question(_PATHOLOGICAL, "¿Es alérgico a algún medicamento?", "text",
             ("Niega", "Penicilina", "Ácido acetilsalicílico", "Sulfas", "Ibuprofeno", "Metamizol")),
    Question(_PATHOLOGICAL, "¿Es alérgico al látex?", "yes_no"),
    Question(_PATHOLOGICAL, "¿Toma algún medicamento actualmente?", "text",
             ("No", "Metformina 850 mg c/12 h", "Losartán 50 mg c/24 h", "Levotiroxina 100 mcg", "Anticonceptivos orales")),
    Question(_PATHOLOGICAL, "¿Ha sido hospitalizado u operado?", "text",
             ("No", "Apendicectomía (2015)", "Cesárea (2019)", "Colecistectomía", "Fractura de tibia, 2010")),
    Question(_PATHOLOGICAL, "¿Ha presentado sangrado excesivo tras una extracción o herida?", "yes_no"),
    Question(_PATHOLOGICAL, "¿Padece hipertensión arterial?", "yes_no"),
    Question(_PATHOLOGICAL, "¿Padece diabetes?", "yes_no"),
    Question(_PATHOLOGICAL, "Tipo de sangre", "choice", ("O+", "O-", "A+", "A-", "B+", "B-", "AB+", "No sabe")),
    Question(_NON_PATHOLOGICAL, "¿Fuma?", "choice", ("No", "Ocasionalmente", "Diario", "Exfumador")),
    Question(_NON_PATHOLOGICAL, "Cigarrillos por día", "number", ("0", "20")),
    Question(_NON_PATHOLOGICAL, "¿Consume bebidas alcohólicas?", "choice", ("No", "Ocasionalmente", "Fines de semana", "Diario")),
    Question(_NON_PATHOLOGICAL, "Horas de sueño por noche", "number", ("4", "10")),
    # Retired when the questionnaire was simplified; old answers stay.
    Question(_NON_PATHOLOGICAL, "¿Cuenta con seguro de gastos médicos mayores?", "yes_no", is_active=False),
    Question(_NON_PATHOLOGICAL, "¿Está embarazada o en periodo de lactancia?", "yes_no", female_only=True),
    Question(_NON_PATHOLOGICAL, "Fecha de última menstruación", "date", female_only=True),
    Question(_DENTAL, "Fecha de su última visita al dentista", "date"),
    Question(_DENTAL, "¿Cuántas veces al día se cepilla los dientes?", "number", ("1", "3")),
    Question(_DENTAL, "¿Usa hilo dental?", "yes_no"),
    Question(_DENTAL, "¿Le sangran las encías al cepillarse?", "yes_no"),
    Question(_DENTAL, "¿Rechina o aprieta los dientes?", "yes_no"),
    Question(_DENTAL, "¿Ha tenido complicaciones con la anestesia local?", "text",
             ("No", "Mareo leve", "Taquicardia con epinefrina", "No ha recibido anestesia")),
    Question(_DENTAL, "Motivo principal de su visita", "text",
             ("Revisión general", "Dolor de muela", "Limpieza", "Ortodoncia", "Blanqueamiento", "Urgencia: diente fracturado")),
    Question(None, "Observaciones generales", "text",
             ("Paciente ansioso ante procedimientos dentales.", "Sin observaciones.", "Prefiere citas por la mañana.\nAcude acompañado.")),
)  # fmt: skip


@dataclass(frozen=True)
class Encounter:
    """A kind of consultation: why the patient came, what was found, the CIE-10 diagnosis."""

    dental: bool
    reason: str
    current_illness: str
    physical_exam: str
    code: str
    diagnosis: str
    plan: str
    prognosis: str
    fever: bool = False
    hypertensive: bool = False
    min_age: int = 0  # years: no third molars, hypertension or implants for children


ENCOUNTERS: tuple[Encounter, ...] = (
    Encounter(True, "Dolor en molar inferior derecho", "Inicia hace {days} días con dolor punzante que aumenta con el frío y lo dulce.",
              "Cavidad oral: lesión cariosa profunda en {tooth}, percusión negativa.", "K02.1", "Caries de la dentina",
              "Resina en {tooth}; control en 6 meses.", "Bueno"),
    Encounter(True, "Revisión semestral", "Asintomático. Acude a revisión de rutina.", "Encías rosadas, sin sangrado al sondeo. Placa dentobacteriana leve.",
              "Z01.2", "Examen odontológico", "Profilaxis y aplicación de flúor.", "Bueno"),
    Encounter(True, "Sangrado de encías al cepillarse", "Refiere sangrado gingival desde hace {days} días.", "Encía inflamada y eritematosa en sector anterior inferior.",
              "K05.1", "Gingivitis crónica", "Profilaxis, técnica de cepillado e hilo dental.", "Favorable"),
    Encounter(True, "Movilidad dental", "Refiere movilidad de dientes inferiores y mal aliento.", "Bolsas periodontales de 5 a 6 mm, movilidad grado I en {tooth}.",
              "K05.3", "Periodontitis crónica", "Raspado y alisado radicular por cuadrantes.", "Reservado", min_age=25),
    Encounter(True, "Dolor intenso que no cede con analgésicos", "Dolor espontáneo nocturno de {days} días de evolución.", "Prueba de frío positiva prolongada en {tooth}.",
              "K04.0", "Pulpitis", "Endodoncia en {tooth}.", "Reservado"),
    Encounter(True, "Fractura de diente anterior", "Golpe accidental hace {days} días.", "Fractura de esmalte y dentina en borde incisal de {tooth}.",
              "S02.5", "Fractura de los dientes", "Restauración con resina; valorar corona.", "Bueno"),
    Encounter(True, "Molestia en tercer molar", "Dolor e inflamación en zona retromolar.", "Tercer molar {tooth} parcialmente erupcionado con pericoronitis.",
              "K01.1", "Dientes impactados", "Extracción quirúrgica de {tooth}.", "Bueno", min_age=16),
    Encounter(True, "Sensibilidad al frío", "Sensibilidad al tomar líquidos fríos.", "Caries incipiente en esmalte de {tooth}.",
              "K02.0", "Caries limitada al esmalte", "Sellador y barniz de flúor.", "Bueno"),
    Encounter(True, "Dientes chuecos", "Desea alinear sus dientes.", "Apiñamiento anterior inferior moderado.",
              "K07.3", "Anomalías de la posición del diente", "Ortodoncia con brackets metálicos.", "Favorable", min_age=8),
    Encounter(True, "Llagas en la boca", "Úlceras dolorosas recurrentes.", "Úlcera de 4 mm en mucosa labial inferior.",
              "K12.0", "Estomatitis aftosa recurrente", "Enjuague con clorhexidina; control en 1 semana.", "Bueno"),
    Encounter(True, "Sarro en los dientes", "Refiere manchas y sarro.", "Cálculo supragingival en sector anteroinferior.",
              "K03.6", "Depósitos [acreciones] en los dientes", "Profilaxis con ultrasonido.", "Bueno"),
    Encounter(True, "Le falta un diente", "Perdió el diente por caries hace años.", "Ausencia de {tooth}; reborde alveolar adecuado.",
              "K08.1", "Pérdida de dientes debida a accidente, extracción o enfermedad periodontal local", "Implante y corona en {tooth}.", "Favorable", min_age=18),
    Encounter(False, "Fiebre y dolor de garganta", "Inicia hace {days} días con odinofagia, rinorrea y fiebre no cuantificada.",
              "Faringe hiperémica, sin exudado. Campos pulmonares limpios.", "J06.9",
              "Infección aguda de las vías respiratorias superiores, no especificada", "Paracetamol 500 mg c/8 h por 3 días; abundantes líquidos.", "Bueno", fever=True),
    Encounter(False, "Dolor de garganta", "Odinofagia de {days} días.", "Amígdalas hipertróficas con exudado.",
              "J02.9", "Faringitis aguda, no especificada", "Amoxicilina 500 mg c/8 h por 7 días.", "Bueno", fever=True),
    Encounter(False, "Control de presión arterial", "Paciente hipertenso en tratamiento, refiere apego parcial.", "TA elevada; resto sin alteraciones.",
              "I10", "Hipertensión esencial (primaria)", "Continuar losartán; dieta baja en sodio; control en 1 mes.", "Reservado", hypertensive=True, min_age=30),
    Encounter(False, "Control de glucosa", "Diabético de {days} años de evolución.", "Pies sin lesiones. Glucosa capilar 168 mg/dL.",
              "E11.9", "Diabetes mellitus tipo 2, sin complicaciones", "Metformina 850 mg c/12 h; plan de alimentación.", "Reservado", min_age=30),
    Encounter(False, "Diarrea", "Evacuaciones líquidas desde hace {days} días.", "Abdomen blando, peristalsis aumentada.",
              "A09", "Diarrea y gastroenteritis de presunto origen infeccioso", "Vida Suero Oral; dieta astringente.", "Bueno"),
    Encounter(False, "Dolor de cabeza", "Cefalea frontal de {days} días, sin datos de alarma.", "Exploración neurológica normal.",
              "R51", "Cefalea", "Paracetamol; higiene del sueño.", "Bueno"),
    Encounter(False, "Ardor al orinar", "Disuria y polaquiuria de {days} días.", "Giordano negativo.",
              "N39.0", "Infección de vías urinarias, sitio no especificado", "Nitrofurantoína 100 mg c/12 h por 7 días.", "Bueno"),
    Encounter(False, "Dolor de estómago", "Ardor epigástrico posprandial.", "Dolor a la palpación en epigastrio.",
              "K29.7", "Gastritis, no especificada", "Omeprazol 20 mg c/24 h por 4 semanas.", "Bueno"),
    Encounter(False, "Chequeo general", "Acude para certificado médico.", "Sin alteraciones.",
              "Z00.0", "Examen médico general", "Ninguno.", "Bueno"),
    Encounter(False, "Dolor de espalda baja", "Lumbalgia tras cargar peso hace {days} días.", "Contractura paravertebral lumbar.",
              "M54.5", "Lumbago no especificado", "Naproxeno 250 mg c/12 h; calor local.", "Bueno", min_age=18),
)  # fmt: skip


@dataclass(frozen=True)
class Procedure:
    code: str | None
    name: str
    low: int  # usual price range, MXN
    high: int
    scope: str  # 'tooth' (with surfaces), 'tooth_whole', 'mouth', 'deciduous'


PROCEDURES: tuple[Procedure, ...] = (
    Procedure("D1110", "Profilaxis", 450, 900, "mouth"),
    Procedure("D1208", "Aplicación tópica de flúor", 250, 500, "mouth"),
    Procedure("D2391", "Resina compuesta", 700, 1600, "tooth"),
    Procedure("D2150", "Amalgama", 500, 900, "tooth"),
    Procedure("D2610", "Incrustación de porcelana", 3500, 6500, "tooth"),
    Procedure("D3310", "Endodoncia anterior", 2800, 4500, "tooth_whole"),
    Procedure("D3330", "Endodoncia molar", 4200, 7000, "tooth_whole"),
    Procedure("D7140", "Extracción simple", 600, 1200, "tooth_whole"),
    Procedure("D7240", "Extracción de tercer molar", 2500, 5000, "tooth_whole"),
    Procedure("D2740", "Corona de porcelana", 5000, 8500, "tooth_whole"),
    Procedure("D2740Z", "Corona de zirconia", 6500, 11000, "tooth_whole"),
    Procedure("D6010", "Implante dental", 14000, 25000, "tooth_whole"),
    Procedure("D1351", "Sellador de fosetas y fisuras", 300, 600, "tooth"),
    Procedure("D4341", "Raspado y alisado radicular (cuadrante)", 1200, 2500, "mouth"),
    Procedure("D9972", "Blanqueamiento dental", 3000, 6000, "mouth"),
    Procedure("D9944", "Guarda oclusal", 2500, 4500, "mouth"),
    Procedure("D8670", "Ortodoncia: ajuste mensual", 700, 1200, "mouth"),
    Procedure("D3220", "Pulpotomía", 900, 1600, "deciduous"),
    Procedure(None, "Valoración y diagnóstico", 0, 500, "mouth"),
)

ANTERIOR_POSITIONS = (1, 2, 3)
PERMANENT_TEETH = tuple(q * 10 + p for q in (1, 2, 3, 4) for p in range(1, 9))
DECIDUOUS_TEETH = tuple(q * 10 + p for q in (5, 6, 7, 8) for p in range(1, 6))
POSTERIOR_SURFACES = ("O", "MO", "DO", "MOD", "OV", "OL", "DOL", "MODV", "V", "OP")
ANTERIOR_SURFACES = ("M", "D", "V", "MI", "DI", "MID", "P", "VL")
TREATMENT_NOTES = (
    "Se aplicó anestesia local con lidocaína al 2%.",
    "Paciente refiere sensibilidad posoperatoria leve.",
    "Pendiente radiografía de control.",
    "Se entregan indicaciones por escrito.\nCita de control en 15 días.",
    "Presupuesto aceptado; pago en 2 exhibiciones.",
)


@dataclass(frozen=True)
class VaccineDose:
    vaccine: str
    dose: str
    age_days: int  # recommended age on the Mexican schedule
    site: str
    since: int = 1900  # year the vaccine entered the national schedule
    until: int = 9999  # year it left it


CHILD_SCHEDULE: tuple[VaccineDose, ...] = (
    VaccineDose("BCG", "Única", 0, "Brazo derecho (intradérmica)"),
    VaccineDose("Hepatitis B", "1a", 0, "Muslo izquierdo (vasto lateral)", since=1999),
    VaccineDose("Hexavalente", "1a", 60, "Muslo derecho (vasto lateral)", since=2022),
    VaccineDose("Pentavalente acelular", "1a", 60, "Muslo derecho (vasto lateral)", 2007, 2021),
    VaccineDose("Rotavirus", "1a", 60, "Oral", since=2007),
    VaccineDose("Neumocócica conjugada", "1a", 60, "Muslo izquierdo (vasto lateral)", since=2008),
    VaccineDose("Hepatitis B", "2a", 60, "Muslo izquierdo (vasto lateral)", since=1999),
    VaccineDose("Hexavalente", "2a", 120, "Muslo derecho (vasto lateral)", since=2022),
    VaccineDose("Pentavalente acelular", "2a", 120, "Muslo derecho (vasto lateral)", 2007, 2021),
    VaccineDose("Rotavirus", "2a", 120, "Oral", since=2007),
    VaccineDose("Neumocócica conjugada", "2a", 120, "Muslo izquierdo (vasto lateral)", since=2008),
    VaccineDose("Hexavalente", "3a", 180, "Muslo derecho (vasto lateral)", since=2022),
    VaccineDose("Pentavalente acelular", "3a", 180, "Muslo derecho (vasto lateral)", 2007, 2021),
    VaccineDose("Hepatitis B", "3a", 180, "Muslo izquierdo (vasto lateral)", since=1999),
    VaccineDose("Rotavirus", "3a", 180, "Oral", since=2007),
    VaccineDose("Influenza", "1a", 180, "Muslo izquierdo (vasto lateral)"),
    VaccineDose("Influenza", "2a", 210, "Muslo izquierdo (vasto lateral)"),
    VaccineDose("SRP", "1a", 365, "Brazo izquierdo (subcutánea)"),
    VaccineDose(
        "Neumocócica conjugada", "Refuerzo", 365, "Muslo izquierdo (vasto lateral)", since=2008
    ),
    VaccineDose("Hexavalente", "4a", 540, "Brazo izquierdo (deltoides)", since=2022),
    VaccineDose("Pentavalente acelular", "4a", 540, "Brazo izquierdo (deltoides)", 2007, 2021),
    VaccineDose("SRP", "2a", 540, "Brazo izquierdo (subcutánea)"),
    VaccineDose("DPT", "Refuerzo", 4 * 365, "Brazo izquierdo (deltoides)"),
    VaccineDose("VPH", "Única", 11 * 365, "Brazo izquierdo (deltoides)", since=2012),
    VaccineDose("Td", "Refuerzo", 15 * 365, "Brazo izquierdo (deltoides)"),
)

MANUFACTURERS = {
    "BCG": ("Serum Institute of India", "Birmex"),
    "Hepatitis B": ("GSK", "MSD", "LG Chem"),
    "Hexavalente": ("Sanofi Pasteur", "GSK"),
    "Pentavalente acelular": ("Sanofi Pasteur", "GSK"),
    "Rotavirus": ("GSK", "MSD"),
    "Neumocócica conjugada": ("Pfizer", "MSD"),
    "Influenza": ("Sanofi Pasteur", "Birmex", "Abbott"),
    "SRP": ("MSD", "Serum Institute of India"),
    "DPT": ("Birmex", "Serum Institute of India"),
    "VPH": ("MSD",),
    "Td": ("Birmex", "Serum Institute of India"),
    "COVID-19": ("Pfizer-BioNTech", "AstraZeneca", "Sinovac", "CanSino", "Moderna"),
}

VACCINE_NOTES = (
    "Sin reacciones adversas.",
    "Reacción local leve (eritema).",
    "Se indica paracetamol en caso de fiebre.",
    "Aplicada en campaña de vacunación.",
)

ALLERGIES = (
    "Negadas", "Penicilina", "Penicilina y sulfas", "Látex", "Ácido acetilsalicílico",
    "Polen; rinitis estacional", "Mariscos", "Ibuprofeno (urticaria)",
)  # fmt: skip

PATIENT_NOTES = (
    "Paciente puntual.\nPrefiere citas por la mañana.",
    "Referido por la Dra. Peña.",
    "Requiere factura a nombre de su empresa.",
    "Ansiedad dental: explicar cada paso.\nUsar anestesia tópica antes de la infiltración.",
    "Tutor: su mamá, Sra. Ordóñez.",
    "Aviso de privacidad firmado el día de la primera cita.",
)  # fmt: skip

BLOOD_TYPES = ("O+", "O+", "O+", "A+", "A+", "B+", "O-", "A-", "AB+", "B-", "AB-")

TAX_REGIMES = (
    "605",
    "612",
    "626",
    "616",
    "606",
    "621",
)  # SAT régimen fiscal codes for personas físicas
